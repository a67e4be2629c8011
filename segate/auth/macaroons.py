"""Macaroons segate issues itself: secrets, minting, and verification into a Principal.

Rules (PROTOCOLS.md §3; field reports B04, B09, B12):

* Wire format (§3.1): libmacaroons V1 packets, base64url without padding (the standard
  alphabet and padding are accepted too). Signatures follow libmacaroons (pymacaroons does the
  HMAC chain). Packets are parsed here, strictly, before pymacaroons sees them: its own V1
  parser loops forever on a zero-length packet. Third-party caveats are refused.
* Secrets (§3.6): the keyring holds the current secret (signs and verifies) and previous ones
  (verify only). A key id, a short hash of the secret, starts the identifier
  ``<keyid>:<random>``, so verification picks the right secret without trying them all, and
  gateways or workers sharing a secret file accept each other's macaroons. A secret file holds
  base64 (XRootD's format) or raw bytes, at least 32 bytes either way; a missing current secret
  is created 0600 with 64 random bytes.
* Caveats we mint, in this order: ``id:<base64url JSON>`` (the identity it was minted for),
  ``path:<url-encoded path>``, ``activity:<A,B>``, ``before:<instant>``, optionally
  ``ip:<cidr,...>``. Their meaning and the use-time checks are in ``macaroon_caveats``.
* Verification: key by the identifier's key id, then the HMAC chain with every first-party
  caveat given to a checker that fails unknown, malformed or unmet caveats. An unmet caveat is
  reported only when the signature is otherwise good (a forgery learns nothing). A recognised
  macaroon that fails is a 401 and never falls through to another credential kind (chain.py).
* The Principal is ``Kind.MACAROON`` with the minting identity's fields, ``via=(<its kind>,)``,
  its capability grants (or None: ``[[rules]]`` judge the identity again at use time, so removing
  a rule revokes), the restrictions it carried plus one for this macaroon's caveats. Whether a
  request is allowed is decided by ``authz.decide``, never here.
* A macaroon never appears in an exception message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pymacaroons import Caveat, Macaroon, Verifier
from pymacaroons.exceptions import MacaroonException

from segate.auth.chain import Credentials
from segate.auth.durations import format_instant
from segate.auth.macaroon_caveats import (
    CaveatChecker,
    CaveatError,
    MintedFor,
    activity_list,
    principal_from,
)
from segate.auth.principal import Activity, Principal
from segate.errors import Unauthenticated
from segate.paths import LogicalPath

log = logging.getLogger("segate")

MAX_MACAROON_BYTES = 32 * 1024
MIN_SECRET_BYTES = 32
NEW_SECRET_BYTES = 64
KEY_ID_CHARS = 8

_B64 = re.compile(r"[A-Za-z0-9_+/-]+={0,2}")
_V1_HEAD = re.compile(rb"[0-9a-fA-F]{4}(?:location|identifier) ")
_IDENTIFIER = re.compile(rf"([A-Za-z0-9_-]{{{KEY_ID_CHARS}}}):[A-Za-z0-9_-]{{8,64}}")


# -- secrets ---------------------------------------------------------------------------------
def key_id(secret: bytes) -> str:
    digest = hashlib.sha256(b"segate macaroon key id\0" + secret).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:KEY_ID_CHARS]


def decode_secret(data: bytes, where: str = "secret") -> bytes:
    """Base64 text (XRootD's format) decoding to >= 32 bytes, else the raw bytes (>= 32)."""
    text = data.strip()
    if text and re.fullmatch(rb"[A-Za-z0-9+/_=\-\s]+", text):
        compact = re.sub(rb"\s", b"", text).replace(b"-", b"+").replace(b"_", b"/").rstrip(b"=")
        compact += b"=" * (-len(compact) % 4)
        try:
            decoded = base64.b64decode(compact, validate=True)
        except binascii.Error:
            decoded = b""
        if len(decoded) >= MIN_SECRET_BYTES:
            return decoded
    if len(data) >= MIN_SECRET_BYTES:
        return data
    raise ValueError(f"{where}: a macaroon secret needs at least {MIN_SECRET_BYTES} bytes")


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret at ``path``; create it (0600, base64 of 64 random bytes) if absent.

    Creation is atomic (write a temp file, hard-link it into place) so several workers starting
    at once all end up with the same secret.
    """
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(base64.b64encode(secrets.token_bytes(NEW_SECRET_BYTES)) + b"\n")
            try:
                os.link(tmp, path)
                log.info("created macaroon secret %s", path)
            except FileExistsError:
                pass  # another worker won the race: use its secret
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        log.warning("macaroon secret %s is readable by other users; chmod 600 it", path)
    return decode_secret(path.read_bytes(), str(path))


class MacaroonKeyring:
    """The current secret (signs) and previous ones (verify only), by key id."""

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        if len(current) < MIN_SECRET_BYTES:
            raise ValueError(f"a macaroon secret needs at least {MIN_SECRET_BYTES} bytes")
        self.current_id = key_id(current)
        self._current = current
        self._keys: dict[str, bytes] = {}
        for secret in (*reversed(previous), current):  # the current one wins a (2^-48) clash
            self._keys[key_id(secret)] = secret

    @classmethod
    def from_files(cls, secret_file: Path, previous: Sequence[Path] = ()) -> MacaroonKeyring:
        prev = [decode_secret(p.read_bytes(), str(p)) for p in previous]
        return cls(load_or_create_secret(secret_file), prev)

    @property
    def signing_key(self) -> bytes:
        return self._current

    def key(self, kid: str) -> bytes | None:
        return self._keys.get(kid)


# -- minting ---------------------------------------------------------------------------------
def mint(
    keyring: MacaroonKeyring,
    *,
    location: str,
    minted_for: MintedFor,
    path: LogicalPath,
    activities: frozenset[Activity],
    expires_at: float,
    networks: Sequence[str] = (),
) -> str:
    """A serialised macaroon. The caller has already bounded everything by the minter's rights."""
    if not activities:
        raise ValueError("a macaroon needs at least one activity")
    identifier = f"{keyring.current_id}:{secrets.token_urlsafe(16)}"
    m = Macaroon(location=location, identifier=identifier, key=keyring.signing_key)
    m.add_first_party_caveat("id:" + minted_for.encode())
    m.add_first_party_caveat("path:" + path.url_path())
    m.add_first_party_caveat("activity:" + ",".join(activity_list(activities)))
    m.add_first_party_caveat("before:" + format_instant(expires_at))
    if networks:
        m.add_first_party_caveat("ip:" + ",".join(networks))
    token: str = m.serialize()
    return token


# -- verification ----------------------------------------------------------------------------
def _b64decode(token: str) -> bytes:
    if not _B64.fullmatch(token):
        raise ValueError("not base64")
    t = token.rstrip("=").replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))


#: base64 characters whose 6 bits start an ASCII hex digit (0x30-0x39, 0x41-0x46, 0x61-0x66):
#: a V1 packet starts with 4 hex digits, so a token starting otherwise is never a macaroon
_HEX_FIRST_CHARS = frozenset("MNOQRYZ")


def looks_like_macaroon(token: str) -> bool:
    """Cheap shape test: base64 of a V1 packet ``location`` or ``identifier``. No crypto."""
    if not token or token[0] not in _HEX_FIRST_CHARS:
        return False  # e.g. every JWT ("eyJ"): no decoding needed to say no
    head = token[:20]
    if len(head) < 20 or not _B64.fullmatch(head):
        return False
    try:
        return _V1_HEAD.match(_b64decode(head)) is not None
    except (ValueError, binascii.Error):
        return False


def parse_v1(raw: bytes) -> Macaroon:
    """Strict V1 parser: location?, identifier, cid*, signature (32 bytes), nothing else."""
    packets: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(raw):
        size_hex = raw[i : i + 4]
        if len(size_hex) < 4 or not re.fullmatch(rb"[0-9a-fA-F]{4}", size_hex):
            raise ValueError("bad packet header")
        size = int(size_hex, 16)
        body = raw[i + 4 : i + size]
        if size < 7 or len(body) != size - 4 or not body.endswith(b"\n") or b" " not in body:
            raise ValueError("bad packet")
        key, _, value = body[:-1].partition(b" ")
        packets.append((key, value))
        i += size
    keys = [k for k, _ in packets]
    if keys and keys[0] == b"location":
        location, packets, keys = packets[0][1], packets[1:], keys[1:]
    else:
        location = b""
    if len(keys) < 2 or keys[0] != b"identifier" or keys[-1] != b"signature":
        raise ValueError("bad packet order")
    if any(k != b"cid" for k in keys[1:-1]):
        raise ValueError("third-party or unknown packets")
    signature = packets[-1][1]
    if len(signature) != 32:
        raise ValueError("bad signature length")
    caveats = [Caveat(caveat_id=v, version=1) for _, v in packets[1:-1]]
    return Macaroon(
        location=location,
        identifier=packets[0][1],
        caveats=caveats,
        signature=binascii.hexlify(signature),
    )


class MacaroonAuthenticator:
    """The BearerAuthenticator for macaroons this gateway (or one sharing its secret) minted."""

    name = "macaroon"

    def __init__(
        self,
        keyring: MacaroonKeyring,
        *,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.leeway = leeway
        self.clock = clock

    def recognises(self, token: str) -> bool:
        return looks_like_macaroon(token)

    async def authenticate(self, token: str, creds: Credentials) -> Principal:
        return self.verify(token, client_ip=creds.client_ip)

    def verify(self, token: str, *, client_ip: str) -> Principal:
        if len(token) > MAX_MACAROON_BYTES:
            raise Unauthenticated("macaroon too large")
        try:
            m = parse_v1(_b64decode(token))
            identifier = m.identifier_bytes.decode("ascii")
            for c in m.caveats:
                c.caveat_id_bytes.decode("utf-8")  # pymacaroons hands predicates str
        except (ValueError, binascii.Error, MacaroonException):
            raise Unauthenticated("malformed macaroon") from None
        ident = _IDENTIFIER.fullmatch(identifier)
        key = self.keyring.key(ident.group(1)) if ident else None
        if key is None:
            raise Unauthenticated("macaroon was not minted with a secret of this server")
        checker = CaveatChecker(now=self.clock(), leeway=self.leeway, client_ip=client_ip)
        # Report an unmet caveat only for an authentic macaroon; a forgery learns nothing.
        if not _verifies(m, key, checker) and (
            checker.failure is None or not _verifies(m, key, lambda _c: True)
        ):
            raise Unauthenticated("macaroon signature verification failed")
        try:
            facts = checker.facts()
        except CaveatError as exc:
            raise Unauthenticated(f"macaroon rejected: {exc}") from None
        return principal_from(facts)


def _verifies(m: Macaroon, key: bytes, predicate: Callable[[str], bool]) -> bool:
    v = Verifier()
    v.satisfy_general(predicate)
    try:
        return bool(v.verify(m, key))
    except MacaroonException:
        return False
