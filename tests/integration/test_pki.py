"""The generated test PKI, checked with real tools: openssl, voms-proxy-info, curl, litmus, ssl.

Every TLS connection is on 127.0.0.1. The server side reads the verified client chain with
CPython 3.11's private ``_sslobj.get_verified_chain()`` (public from 3.13): it returns a list of
``_ssl.Certificate``, leaf first; ``cert.public_bytes(_ssl.ENCODING_DER)`` gives DER ``bytes``
(the default, ``ENCODING_PEM``, gives a ``str``).
"""

from __future__ import annotations

import _ssl
import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from segate.devpki import subject_hash
from testbed import pki as tpki
from testbed.pki import TestPKI, build_test_pki

pytestmark = pytest.mark.skipif(
    not (shutil.which("voms-proxy-fake") and shutil.which("openssl")),
    reason="needs voms-proxy-fake (voms-clients) and openssl",
)

REPO = Path(__file__).resolve().parents[2]
GOOD_PROXIES = (
    "voms",
    "plain",
    "voms_user_only",
    "rogue_ac",
    "expired_ac",
    "limited",
    "other_user",
)
LIMITED_POLICY = "1.3.6.1.4.1.3536.1.1.1.9"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return build_test_pki(tmp_path_factory.mktemp("pki"))


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=full_env, timeout=60
    )


def certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


# --- files and layout -------------------------------------------------------------------------


def test_layout_and_modes(pki: TestPKI) -> None:
    for p in pki.files():
        assert p.exists(), p
    listing = sorted(p.name for p in pki.ca_dir.iterdir())
    h = subject_hash(pki.ca_cert)
    assert listing == [f"{h}.0", f"{h}.r0"]
    assert subject_hash(pki.untrusted_ca_cert) != h
    private = [pki.ca_key, pki.host_key, pki.user_key, pki.user_p12, pki.other_user_key]
    private += [pki.voms_key, pki.rogue_voms_key, *pki.proxies.values()]
    for p in private:
        assert p.stat().st_mode & 0o777 == 0o600, p
    for p in pki.proxies.values():
        text = p.read_text()
        assert text.count("BEGIN CERTIFICATE") == 2 and text.count("PRIVATE KEY-----") == 2


def test_subjects_and_host_cert(pki: TestPKI) -> None:
    def slash(c: x509.Certificate) -> str:
        return "".join(f"/{a.rfc4514_string()}" for a in c.subject)

    assert slash(certs(pki.ca_cert)[0]) == tpki.CA_DN == "/DC=test/DC=testbed/CN=Testbed CA"
    assert slash(certs(pki.user_cert)[0]) == "/DC=test/DC=testbed/OU=Users/CN=Test User"
    assert slash(certs(pki.other_user_cert)[0]) == tpki.OTHER_USER_DN
    assert slash(certs(pki.voms_cert)[0]) == "/DC=test/DC=testbed/CN=voms.localhost"
    assert slash(certs(pki.rogue_voms_cert)[0]) == tpki.ROGUE_VOMS_DN
    host = certs(pki.host_cert)[0]
    assert slash(host) == "/DC=test/DC=testbed/CN=localhost"
    san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = host.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_vomsdir(pki: TestPKI) -> None:
    for vo in ("testvo", "othervo"):
        lsc = (pki.vomsdir / vo / "voms.localhost.lsc").read_text().splitlines()
        assert lsc == [tpki.VOMS_DN, tpki.CA_DN]
    assert tpki.ROGUE_VOMS_DN not in "".join(p.read_text() for p in pki.vomsdir.rglob("*.lsc"))


def test_user_p12_empty_password(pki: TestPKI) -> None:
    assert (
        run("openssl", "pkcs12", "-in", pki.user_p12, "-noout", "-passin", "pass:").returncode == 0
    )
    key, cert, extra = pkcs12.load_key_and_certificates(pki.user_p12.read_bytes(), b"")
    assert key is not None and cert == certs(pki.user_cert)[0] and extra == []


def test_env(pki: TestPKI) -> None:
    assert pki.env() == {
        "X509_CERT_DIR": str(pki.ca_dir),
        "X509_VOMS_DIR": str(pki.vomsdir),
        "X509_USER_PROXY": str(pki.proxy_voms),
    }
    assert pki.env(pki.proxy_plain)["X509_USER_PROXY"] == str(pki.proxy_plain)


def test_reuse_and_rebuild(tmp_path: Path) -> None:
    first = build_test_pki(tmp_path)
    proxy = first.proxy_voms.read_bytes()
    assert build_test_pki(tmp_path) == first
    assert first.proxy_voms.read_bytes() == proxy  # reused, not regenerated
    first.proxy_limited.unlink()
    build_test_pki(tmp_path)  # incomplete -> rebuilt from scratch
    assert first.proxy_limited.exists() and first.proxy_voms.read_bytes() != proxy


def test_cli_prints_paths(pki: TestPKI) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "testbed.pki", str(pki.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "proxy_voms" in res.stdout and str(pki.proxy_voms) in res.stdout
    assert f"export X509_CERT_DIR={pki.ca_dir}" in res.stdout


# --- openssl verify ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["host_cert", "user_cert", "other_user_cert", "voms_cert", "rogue_voms_cert"]
)
def test_openssl_verifies_eec_with_crl(pki: TestPKI, name: str) -> None:
    res = run("openssl", "verify", "-CApath", pki.ca_dir, "-crl_check", getattr(pki, name))
    assert res.returncode == 0 and res.stdout.strip().endswith(": OK"), res.stdout + res.stderr


def test_openssl_rejects_untrusted_user(pki: TestPKI) -> None:
    res = run("openssl", "verify", "-CApath", pki.ca_dir, "-crl_check", pki.untrusted_user_cert)
    assert (
        res.returncode != 0 and "unable to get local issuer certificate" in res.stdout + res.stderr
    )


def openssl_verify_proxy(pki: TestPKI, proxy: Path) -> subprocess.CompletedProcess[str]:
    return run(
        "openssl", "verify", "-allow_proxy_certs", "-CApath", pki.ca_dir, "-untrusted", proxy, proxy
    )


@pytest.mark.parametrize("name", GOOD_PROXIES)
def test_openssl_verifies_proxy(pki: TestPKI, name: str) -> None:
    res = openssl_verify_proxy(pki, pki.proxies[name])
    assert res.returncode == 0 and res.stdout.strip().endswith(": OK"), res.stdout + res.stderr


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("expired", "certificate has expired"),
        ("untrusted", "unable to get local issuer certificate"),
    ],
)
def test_openssl_rejects_proxy(pki: TestPKI, name: str, error: str) -> None:
    res = openssl_verify_proxy(pki, pki.proxies[name])
    assert res.returncode != 0 and error in res.stdout + res.stderr


@pytest.mark.parametrize(("name", "policy"), [("voms", "Inherit all"), ("limited", LIMITED_POLICY)])
def test_proxy_cert_info(pki: TestPKI, name: str, policy: str) -> None:
    res = run("openssl", "x509", "-noout", "-ext", "proxyCertInfo", "-in", pki.proxies[name])
    assert "Proxy Certificate Information: critical" in res.stdout
    assert f"Policy Language: {policy}" in res.stdout


# --- voms-proxy-info --------------------------------------------------------------------------


def voms_info(pki: TestPKI, proxy: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``voms-proxy-info -all`` as (proxy fields, AC fields); values listed in order."""
    res = run("voms-proxy-info", "-all", "-file", proxy, env=pki.env(proxy))
    assert res.returncode == 0, res.stderr
    sections: list[dict[str, list[str]]] = [{}, {}]
    current = 0
    for line in res.stdout.splitlines():
        if line.startswith("=== VO "):
            current = 1
        elif ":" in line:
            key, value = (s.strip() for s in line.split(":", 1))
            sections[current].setdefault(key, []).append(value)
    return sections[0], sections[1]


def hours(timeleft: str) -> float:
    h, m, s = (int(x) for x in timeleft.split(":"))
    return h + m / 60 + s / 3600


@pytest.mark.parametrize(
    ("name", "identity", "vo", "fqans", "ac_issuer"),
    [
        ("voms", tpki.USER_DN, "testvo", list(tpki.FQANS), tpki.VOMS_DN),
        ("voms_user_only", tpki.USER_DN, "testvo", ["/testvo"], tpki.VOMS_DN),
        ("limited", tpki.USER_DN, "testvo", list(tpki.FQANS), tpki.VOMS_DN),
        ("rogue_ac", tpki.USER_DN, "testvo", list(tpki.FQANS), tpki.ROGUE_VOMS_DN),
        ("untrusted", tpki.USER_DN, "testvo", list(tpki.FQANS), tpki.VOMS_DN),
        ("expired", tpki.USER_DN, "testvo", list(tpki.FQANS), tpki.VOMS_DN),
        ("expired_ac", tpki.USER_DN, "testvo", [tpki.FQANS[1]], tpki.VOMS_DN),
        ("other_user", tpki.OTHER_USER_DN, "othervo", ["/othervo"], tpki.VOMS_DN),
    ],
)
def test_voms_proxy_info_shows_ac(
    pki: TestPKI, name: str, identity: str, vo: str, fqans: list[str], ac_issuer: str
) -> None:
    proxy, ac = voms_info(pki, pki.proxies[name])
    assert proxy["identity"] == [identity] and proxy["type"] == ["RFC compliant proxy"]
    assert ac["VO"] == [vo] and ac["attribute"] == fqans and ac["subject"] == [identity]
    assert ac["issuer"] == [ac_issuer] and ac["uri"] == [tpki.VOMS_URI]
    proxy_left, ac_left = hours(proxy["timeleft"][0]), hours(ac["timeleft"][0])
    assert proxy_left == 0 if name == "expired" else proxy_left > 5
    assert ac_left == 0 if name == "expired_ac" else ac_left > 20


def test_plain_proxy_has_no_ac(pki: TestPKI) -> None:
    proxy, ac = voms_info(pki, pki.proxy_plain)
    assert proxy["identity"] == [tpki.USER_DN] and ac == {}
    res = run("voms-proxy-info", "-file", pki.proxy_plain, "-acexists", "testvo", env=pki.env())
    assert res.returncode == 1


def test_expired_ac_dates(pki: TestPKI, tmp_path: Path) -> None:
    """B13 P1: 12 h proxy whose AC was valid for 1 h, from 2 h ago to 1 h ago."""
    leaf = certs(pki.proxy_expired_ac)[0]
    oid = x509.ObjectIdentifier(tpki.VOMS_EXTENSION_OID)
    ext = leaf.extensions.get_extension_for_oid(oid).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    (tmp_path / "ac.der").write_bytes(ext.value)
    res = run("openssl", "asn1parse", "-inform", "DER", "-in", tmp_path / "ac.der")
    times = [ln.rsplit(":", 1)[1] for ln in res.stdout.splitlines() if "GENERALIZEDTIME" in ln]
    start, end = (dt.datetime.strptime(t, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC) for t in times)
    now = dt.datetime.now(dt.UTC)
    assert end - start == dt.timedelta(hours=1) and end < now - dt.timedelta(minutes=30)
    assert leaf.not_valid_after_utc > now + dt.timedelta(hours=5)


# --- TLS handshakes on loopback ---------------------------------------------------------------


@dataclass
class Seen:
    chain: list[bytes] | None = None
    error: BaseException | None = None


def server_context(pki: TestPKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.host_cert, pki.host_key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(capath=str(pki.ca_dir))
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    ctx.num_tickets = 0
    return ctx


@contextlib.contextmanager
def tls_server(pki: TestPKI) -> Iterator[tuple[int, list[Seen]]]:
    """Accepts on 127.0.0.1, records each verified client chain (DER), answers one HTTP 200."""
    ctx = server_context(pki)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    seen: list[Seen] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            record = Seen()
            seen.append(record)
            conn.settimeout(10)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    # None (not []) when the client sent no certificate
                    chain = cast(Any, tls)._sslobj.get_verified_chain() or []
                    record.chain = [c.public_bytes(_ssl.ENCODING_DER) for c in chain]
                    request = b""
                    while b"\r\n\r\n" not in request and (data := tls.recv(4096)):
                        request += data
                    tls.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
                    )
            except (ssl.SSLError, OSError) as exc:
                record.error = exc
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def python_client(pki: TestPKI, port: int, certfile: Path | None) -> bytes | BaseException:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(capath=str(pki.ca_dir))
    if certfile is not None:
        ctx.load_cert_chain(certfile)  # proxy file: cert, key, user cert
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return tls.recv(4096)
    except (ssl.SSLError, OSError) as exc:
        return exc


@pytest.mark.parametrize("name", GOOD_PROXIES)
def test_ssl_server_accepts_proxy_and_exposes_chain(pki: TestPKI, name: str) -> None:
    proxy = pki.proxies[name]
    with tls_server(pki) as (port, seen):
        reply = python_client(pki, port, proxy)
    assert isinstance(reply, bytes) and reply.startswith(b"HTTP/1.1 200"), reply
    assert len(seen) == 1 and seen[0].error is None and seen[0].chain is not None
    chain = [x509.load_der_x509_certificate(der) for der in seen[0].chain]
    assert len(chain) == 3  # proxy, user certificate, CA
    assert chain[0] == certs(proxy)[0]
    assert chain[1] == certs(pki.other_user_cert if name == "other_user" else pki.user_cert)[0]
    assert chain[2] == certs(pki.ca_cert)[0]
    pci = chain[0].extensions.get_extension_for_oid(x509.ObjectIdentifier(tpki.PROXY_CERT_INFO_OID))
    assert pci.critical
    oids = {e.oid.dotted_string for e in chain[0].extensions}
    assert (tpki.VOMS_EXTENSION_OID in oids) == (name != "plain")


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        ("expired", 10, "certificate has expired"),
        ("untrusted", 20, "unable to get local issuer certificate"),
    ],
)
def test_ssl_server_rejects_proxy(pki: TestPKI, name: str, code: int, message: str) -> None:
    with tls_server(pki) as (port, seen):
        reply = python_client(pki, port, pki.proxies[name])
    assert isinstance(reply, ssl.SSLError), reply  # client side: alert or EOF, never data
    assert len(seen) == 1 and seen[0].chain is None
    error = seen[0].error
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert (error.verify_code, error.verify_message) == (code, message)


def test_ssl_server_without_client_cert(pki: TestPKI) -> None:
    with tls_server(pki) as (port, seen):
        reply = python_client(pki, port, None)
    assert isinstance(reply, bytes) and reply.startswith(b"HTTP/1.1 200")
    assert seen[0].chain == []  # CERT_OPTIONAL, nothing presented -> empty list


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("name", ["voms", "expired"])
def test_curl_with_proxy_file(pki: TestPKI, name: str) -> None:
    proxy = pki.proxies[name]
    with tls_server(pki) as (port, seen):
        res = run(
            "curl", "-sS", "--capath", pki.ca_dir, "--cert", proxy, "--key", proxy,
            f"https://127.0.0.1:{port}/",
        )  # fmt: skip
    if name == "voms":
        assert res.returncode == 0 and res.stdout == "ok\n", res.stderr
        assert seen[0].chain is not None and len(seen[0].chain) == 3
    else:
        assert res.returncode != 0 and seen[0].chain is None


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_with_user_p12(pki: TestPKI) -> None:
    with tls_server(pki) as (port, seen):
        res = run(
            "curl", "-sS", "--capath", pki.ca_dir, "--cert-type", "P12", "--cert", pki.user_p12,
            f"https://127.0.0.1:{port}/",
        )  # fmt: skip
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr
    assert seen[0].chain is not None
    assert [x509.load_der_x509_certificate(d) for d in seen[0].chain] == [
        certs(pki.user_cert)[0],
        certs(pki.ca_cert)[0],
    ]


@pytest.mark.skipif(shutil.which("litmus") is None, reason="needs litmus")
def test_litmus_reads_user_p12(pki: TestPKI, tmp_path: Path) -> None:
    """neon/GnuTLS must be able to load user.p12 (it cannot load plain-bag p12 files)."""
    with tls_server(pki) as (port, seen):
        res = subprocess.run(
            ["litmus", "-c", str(pki.user_p12), f"https://127.0.0.1:{port}/litmus/"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,  # litmus writes debug.log into the working directory
            env={**os.environ, "TESTS": "basic"},
        )
    assert "Can not read the client certificate" not in res.stdout, res.stdout
    user = certs(pki.user_cert)[0]
    assert any(s.chain and x509.load_der_x509_certificate(s.chain[0]) == user for s in seen)
