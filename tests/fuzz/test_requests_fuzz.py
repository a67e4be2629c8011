"""Issue #8 invariants through the whole app with hypothesis (tests/fuzz/conftest.py: a live
in-process gateway and raw sockets, so nothing normalises the bytes on the way):

* no request target, method or header value gives a 500 (or no answer);
* nothing outside the storage root is ever served (a sentinel next to the root);
* equivalent encodings of a path get the same decision and the same bytes;
* a token's scopes are never exceeded (a reference model of the WLCG scope rules decides);
* macaroon bytes, macaroon-request JSON and ISO 8601 durations never crash anything.
"""

from __future__ import annotations

import json
import string
import time
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import testbed.issuer as test_issuer
from segate.auth.durations import DurationError, parse_duration
from segate.devissuer import KID
from testbed.issuer import SigningKey
from tests.conftest import AUDIENCE, ISSUER
from tests.fuzz.conftest import SENTINEL, TREE, LiveGateway

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ALL = "storage.read:/ storage.create:/ storage.modify:/"
METHODS = [
    "GET",
    "HEAD",
    "PUT",
    "DELETE",
    "MKCOL",
    "PROPFIND",
    "PROPPATCH",
    "MOVE",
    "COPY",
    "OPTIONS",
    "POST",
    "LOCK",
    "TRACE",
    "get",
    "X" * 40,
]

pieces = st.sampled_from(
    [
        "..",
        ".",
        "",
        "%2e%2e",
        "%2E%2e",
        ".%2e",
        "%252e%252e",
        "%2f",
        "%5c",
        "%00",
        "%",
        "%4",
        "%zz",
        "%c0%ae",
        "%ff",
        "outside",
        "SENTINEL",
        "safe",
        "file.txt",
        "secret",
        "a",
        "b",
        "c",
        "file",
        "x",
        "sp%20ace",
        "p%25ct",
        ";",
        "?",
        "#",
        "~",
        "ü",
        "%C3%BC",
        "\\",
        "%0d%0a",
        "up",
        ".segate",
        "tmp",
        "a" * 300,
    ]
)
targets = st.lists(pieces, min_size=0, max_size=12).map(lambda xs: "/" + "/".join(xs)) | st.text(
    alphabet=string.printable.replace("\r", "").replace("\n", "").replace(" ", "") + "ü€",
    max_size=200,
)


def clean(target: str) -> str:
    return target.replace(" ", "%20").replace("\t", "%09") or "/"


@FUZZ
@given(method=st.sampled_from(METHODS), target=targets)
def test_no_500_and_nothing_outside_the_root(live: LiveGateway, method: str, target: str) -> None:
    tok = live.token(ALL) if hash(target) % 2 else live.token("storage.read:/safe")
    r = live.request(method, clean(target), {"Authorization": f"Bearer {tok}", "Depth": "1"})
    assert r.status != 0, "no answer"
    assert r.status < 500 or r.status in (501, 502, 503), (method, target, r.head[:200])
    assert SENTINEL not in r.body and SENTINEL not in r.head
    assert (live.base / "outside" / "SENTINEL").read_bytes() == SENTINEL


header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=300,
) | st.sampled_from(
    [
        "bytes=0-0",
        "bytes=-0",
        "bytes=0-",
        "bytes=99999999999999999999-",
        "bytes=" + "0-1," * 300,
        "infinity",
        "0",
        "1",
        "T",
        "F",
        "adler32;q=0.5,md5;q=x",
        "http://[::1",
        "https://h:99999/",
        "none",
        "gridsite",
        "-1",
        "chunked",
        "bytes=1-0",
        "PT1S",
        "dav://localhost/a/x",
    ]
)
HEADERS = [
    "Range",
    "Depth",
    "Destination",
    "Overwrite",
    "Want-Digest",
    "Source",
    "Credential",
    "X-Number-Of-Streams",
    "TransferHeaderAuthorization",
    "RequireChecksumVerification",
    "Content-Type",
    "If-Match",
    "Expect",
    "Timeout",
    "Authorization",
]


@FUZZ
@given(
    method=st.sampled_from(["GET", "HEAD", "PROPFIND", "MOVE", "COPY", "MKCOL", "PUT", "DELETE"]),
    path=st.sampled_from(["/a/x", "/a/b/", "/d/f", "/up/new", "/safe/file.txt", "/"]),
    hdrs=st.dictionaries(st.sampled_from(HEADERS), header_values, max_size=5),
)
def test_hostile_headers_never_500(
    live: LiveGateway, method: str, path: str, hdrs: dict[str, str]
) -> None:
    h = {"Authorization": f"Bearer {live.token('storage.read:/ storage.create:/up')}", **hdrs}
    r = live.request(method, path, h)
    assert r.status != 0 and (r.status < 500 or r.status in (501, 503)), (hdrs, r.head[:300])
    assert SENTINEL not in r.body


# -- same decision for equivalent encodings ----------------------------------------------------
UNRESERVED = string.ascii_letters + string.digits + "-._~"


def encode_variant(segments: list[str], draw: Any) -> str:
    out = []
    for seg in segments:
        enc = (
            "".join(f"%{ord(c):02X}" if c in UNRESERVED and draw(st.booleans()) else c for c in seg)
            .replace(" ", "%20")
            .replace("%", "%")
        )
        out.append(enc)
        if draw(st.booleans()):
            out.append("")  # a double slash
        if draw(st.booleans()):
            out.append(".")
    return "/" + "/".join(out)


@FUZZ
@given(
    rel=st.sampled_from([k for k in TREE if " " not in k and "%" not in k] + ["a/b", "nope/x"]),
    scope=st.sampled_from(
        ["storage.read:/", "storage.read:/a", "storage.read:/a/b", "storage.read:/ab"]
    ),
    data=st.data(),
)
def test_same_decision_for_equivalent_encodings(
    live: LiveGateway, rel: str, scope: str, data: Any
) -> None:
    h = {"Authorization": f"Bearer {live.token(scope)}"}
    canonical = live.request("GET", "/" + rel, h)
    variant = encode_variant(rel.split("/"), data.draw)
    other = live.request("GET", variant, h)
    assert (other.status, other.body) == (canonical.status, canonical.body), variant
    dotted = "/zz/.." + variant  # a literal dot-dot is resolved before any decision
    again = live.request("GET", dotted, h)
    assert (again.status, again.body) == (canonical.status, canonical.body), dotted


# -- scopes are never exceeded -------------------------------------------------------------------
SCOPE_PATHS = ["/", "/a", "/a/b", "/a/b/c", "/a/x", "/ab", "/d", "/up", "/up/sub"]
PERMS = ["storage.read", "storage.create", "storage.modify", "storage.stage", "read", "write"]


def covers(scope_path: str, path: str) -> bool:
    s = [p for p in scope_path.split("/") if p]
    q = [p for p in path.split("/") if p]
    return q[: len(s)] == s


def model_allows(scopes: list[tuple[str, str]], op: str, path: str) -> bool:
    if op == "read":
        want = {"storage.read", "storage.stage", "read"}  # stage_implies_read (default)
    else:  # create a new file
        want = {"storage.create", "storage.modify", "write"}
    return any(p in want and covers(sp, path) for p, sp in scopes)


@FUZZ
@given(
    scopes=st.lists(
        st.tuples(st.sampled_from(PERMS), st.sampled_from(SCOPE_PATHS)), min_size=1, max_size=4
    ),
    read_target=st.sampled_from(["/a/b/c/file", "/a/x", "/ab/y", "/d/f"]),
    put_dir=st.sampled_from(["/up", "/up/sub", "/a/b", "/d"]),
)
def test_scopes_never_exceeded(
    live: LiveGateway, scopes: list[tuple[str, str]], read_target: str, put_dir: str
) -> None:
    (live.root / "up" / "sub").mkdir(exist_ok=True)
    tok = live.token(" ".join(f"{p}:{sp}" for p, sp in scopes))
    h = {"Authorization": f"Bearer {tok}"}
    r = live.request("GET", read_target, h)
    assert r.status == (200 if model_allows(scopes, "read", read_target) else 403), (
        scopes,
        r.status,
    )
    target = f"{put_dir}/{uuid.uuid4().hex}"
    r = live.request("PUT", target, h, b"x")
    allowed = model_allows(scopes, "create", target)
    assert r.status == (201 if allowed else 403), (scopes, target, r.status)
    assert (live.root / target.lstrip("/")).exists() == allowed


# -- JWT claims and macaroons ------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    claims=st.dictionaries(
        st.sampled_from(
            [
                "exp",
                "nbf",
                "iat",
                "aud",
                "scope",
                "sub",
                "wlcg.ver",
                "wlcg.groups",
                "ver",
                "iss",
                "jti",
                "x",
            ]
        ),
        json_values,
        max_size=4,
    )
)
def test_jwt_claims_never_500_never_wider(live: LiveGateway, claims: dict[str, Any]) -> None:
    """Any claim of any JSON type: 200/401/403, never a 500; a scope without /secret never
    reads /secret."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "fuzz",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "wlcg.ver": "1.0",
        "scope": "storage.read:/safe",
        "jti": uuid.uuid4().hex,
    }
    base.update(claims)
    key = SigningKey(KID, "ES256", live.issuer._key())
    tok = test_issuer.encode({"alg": "ES256", "typ": "JWT", "kid": KID}, base, key)
    h = {"Authorization": f"Bearer {tok}"}
    for target in ("/secret/x", "/safe/file.txt"):
        r = live.request("GET", target, h)
        assert r.status in (200, 401, 403), (claims, r.status, r.body[:200])
    scope = base.get("scope")
    may_read_all = isinstance(scope, str) and any(
        s in ("storage.read:/", "read:/", "storage.stage:/") for s in scope.split()
    )
    if not may_read_all:
        assert live.request("GET", "/secret/x", h).status != 200, claims


def _shape(mac: str) -> tuple[Any, ...] | None:
    from pymacaroons import Macaroon

    try:
        m = Macaroon.deserialize(mac)
        return (m.identifier, [c.caveat_id for c in m.caveats], m.signature)
    except Exception:
        return None


@FUZZ
@given(blob=st.binary(max_size=400), flip=st.integers(0, 10_000))
def test_macaroon_bytes_are_401(live: LiveGateway, blob: bytes, flip: int) -> None:
    import base64

    real = live.request(
        "POST",
        "/safe",
        {
            "Authorization": f"Bearer {live.token(ALL)}",
            "Content-Type": "application/macaroon-request",
        },
        b"",
    )
    assert real.status == 200, real.body
    mac: str = json.loads(real.body)["macaroon"]
    raw = bytearray(base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4)))
    raw[flip % len(raw)] ^= 1 + flip % 255
    candidates = [
        base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="),
        "MDAx" + base64.urlsafe_b64encode(blob).decode().rstrip("="),
        base64.b64encode(blob).decode(),
        mac[: max(4, flip % len(mac))],
    ]
    original = _shape(mac)
    for cand in candidates:
        r = live.request("GET", "/safe/file.txt", {"Authorization": f"Bearer {cand}"})
        if r.status == 200:
            # only a change in the unsigned ``location`` hint leaves a macaroon valid
            assert _shape(cand) == original, cand[:60]
        else:
            assert r.status in (400, 401), (cand[:40], r.status)


@FUZZ
@given(
    body=json_values
    | st.fixed_dictionaries(
        {
            "caveats": st.lists(
                st.text(max_size=60)
                | st.sampled_from(
                    [
                        "activity:DOWNLOAD",
                        "activity:",
                        "path:/safe/x",
                        "path:../",
                        "before:2099-01-01T00:00:00Z",
                        "before:9999-99-99T99:99:99Z",
                        "ip:127.0.0.1",
                        "ip:999.1.1.1/77",
                        "id:x",
                    ]
                ),
                max_size=5,
            ),
            "validity": st.text(max_size=20)
            | st.sampled_from(["PT1M", "P1D", "P1Y", "PT0S", "-PT1S"]),
        }
    )
)
def test_macaroon_request_json_never_500(live: LiveGateway, body: Any) -> None:
    h = {
        "Authorization": f"Bearer {live.token('storage.read:/safe')}",
        "Content-Type": "application/macaroon-request",
    }
    r = live.request("POST", "/safe", h, json.dumps(body).encode())
    assert r.status in (200, 400, 403, 413), (body, r.status, r.body[:200])


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(alphabet="PTWDHMSYpt0123456789.,-+ ", max_size=70)
    | st.from_regex(
        r"P(\d{1,12}W)?(\d{1,12}D)?(T(\d{1,12}H)?(\d{1,12}M)?(\d{1,12}(\.\d{1,12})?S)?)?",
        fullmatch=True,
    )
)
def test_durations_parse_or_refuse(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except DurationError:
        return
    assert 0 < seconds <= 10 * 366 * 86400
