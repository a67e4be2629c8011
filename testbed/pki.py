"""Test and testbed grid PKI, generated at test time (nothing here is ever committed).

``build_test_pki(out)`` writes, under ``out``: a trusted test CA in a hashed CA directory
(``X509_CERT_DIR``), a second CA that is *not* trusted, host/user/VOMS certificates, a vomsdir
(``X509_VOMS_DIR``) and a set of RFC 3820 proxies made with the real ``voms-proxy-fake`` binary,
covering the positive and negative cases of X.509/VOMS authentication (field report B13).

The result is cached in ``out`` (guarded by a lock file) and rebuilt when older than
``max_age`` so the 12-24 h proxies always have hours left. Proxy files hold the proxy
certificate, its key and the user certificate, mode 0600, usable as ``curl --cert P --key P``
and as ``X509_USER_PROXY``.

Run ``python -m testbed.pki OUT`` to build one by hand and print its paths.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from segate import devpki

Dn = tuple[tuple[str, str], ...]

_BASE: Dn = (("DC", "test"), ("DC", "testbed"))
CA_PARTS: Dn = (*_BASE, ("CN", "Testbed CA"))
UNTRUSTED_CA_PARTS: Dn = (("DC", "test"), ("DC", "untrusted"), ("CN", "Untrusted CA"))
HOST_PARTS: Dn = (*_BASE, ("CN", "localhost"))
USER_PARTS: Dn = (*_BASE, ("OU", "Users"), ("CN", "Test User"))
OTHER_USER_PARTS: Dn = (*_BASE, ("OU", "Users"), ("CN", "Other User"))
VOMS_PARTS: Dn = (*_BASE, ("CN", "voms.localhost"))
ROGUE_VOMS_PARTS: Dn = (*_BASE, ("CN", "rogue-voms.localhost"))


def slash_dn(parts: Dn) -> str:
    """OpenSSL/grid slash form, e.g. ``/DC=test/DC=testbed/CN=Testbed CA``."""
    return "".join(f"/{k}={v}" for k, v in parts)


CA_DN = slash_dn(CA_PARTS)
UNTRUSTED_CA_DN = slash_dn(UNTRUSTED_CA_PARTS)
HOST_DN = slash_dn(HOST_PARTS)
USER_DN = slash_dn(USER_PARTS)
#: The untrusted CA's user deliberately impersonates Test User (same subject DN).
UNTRUSTED_USER_DN = USER_DN
OTHER_USER_DN = slash_dn(OTHER_USER_PARTS)
VOMS_DN = slash_dn(VOMS_PARTS)
ROGUE_VOMS_DN = slash_dn(ROGUE_VOMS_PARTS)
VOMS_HOST = "voms.localhost"
VOMS_URI = f"{VOMS_HOST}:15000"
VO = "testvo"
OTHER_VO = "othervo"
FQANS = ("/testvo/Role=NULL/Capability=NULL", "/testvo/Role=production/Capability=NULL")
VOMS_EXTENSION_OID = "1.3.6.1.4.1.8005.100.100.5"
PROXY_CERT_INFO_OID = "1.3.6.1.5.5.7.1.14"

_LAYOUT_VERSION = 1
_MARKER = "testpki.json"
_OWNED = (
    "ca",
    "untrusted-ca",
    "certificates",
    "host",
    "user",
    "other-user",
    "untrusted-user",
    "voms",
    "rogue-voms",
    "vomsdir",
    "proxies",
)
_make_crl: Callable[..., x509.CertificateRevocationList] = devpki.make_crl


@dataclass(frozen=True, slots=True)
class TestPKI:
    """Every file of the test PKI; all paths are under ``root``."""

    __test__ = False  # not a pytest test class

    root: Path
    ca_dir: Path  # hashed CA directory: <hash>.0 + <hash>.r0 (X509_CERT_DIR)
    ca_cert: Path
    ca_key: Path
    ca_crl: Path
    untrusted_ca_cert: Path  # NOT in ca_dir
    untrusted_ca_key: Path
    host_cert: Path  # CN=localhost, SAN DNS:localhost + IP:127.0.0.1
    host_key: Path
    user_cert: Path  # Test User
    user_key: Path
    user_p12: Path  # empty password, leaf + key only
    other_user_cert: Path
    other_user_key: Path
    untrusted_user_cert: Path  # same DN as Test User, issued by the untrusted CA
    untrusted_user_key: Path
    voms_cert: Path  # the AC signer listed in vomsdir
    voms_key: Path
    rogue_voms_cert: Path  # signed by the test CA, NOT listed in vomsdir
    rogue_voms_key: Path
    vomsdir: Path  # X509_VOMS_DIR: <vo>/voms.localhost.lsc for testvo and othervo
    proxy_voms: Path  # 24 h, AC 24 h, FQANS
    proxy_plain: Path  # 24 h, no AC
    proxy_voms_user_only: Path  # 12 h, FQAN /testvo
    proxy_expired: Path  # expired 30 min ago, carries a valid-dated AC
    proxy_untrusted: Path  # from untrusted_user_cert, carries an AC with FQANS
    proxy_rogue_ac: Path  # 12 h, AC with FQANS signed by rogue_voms_cert, uri voms.localhost
    proxy_expired_ac: Path  # 12 h proxy, AC /testvo/Role=production valid -2 h .. -1 h
    proxy_limited: Path  # 12 h Globus-limited policy, AC with FQANS
    proxy_other_user: Path  # Other User, 12 h, AC /othervo

    @classmethod
    def at(cls, out: Path) -> TestPKI:
        """The (fixed) layout under ``out``; files exist only after ``build_test_pki``."""
        o = out.resolve()
        p = o / "proxies"
        return cls(
            root=o,
            ca_dir=o / "certificates",
            ca_cert=o / "ca/ca.pem",
            ca_key=o / "ca/ca.key",
            ca_crl=o / "ca/ca.crl.pem",
            untrusted_ca_cert=o / "untrusted-ca/ca.pem",
            untrusted_ca_key=o / "untrusted-ca/ca.key",
            host_cert=o / "host/hostcert.pem",
            host_key=o / "host/hostkey.pem",
            user_cert=o / "user/usercert.pem",
            user_key=o / "user/userkey.pem",
            user_p12=o / "user/user.p12",
            other_user_cert=o / "other-user/usercert.pem",
            other_user_key=o / "other-user/userkey.pem",
            untrusted_user_cert=o / "untrusted-user/usercert.pem",
            untrusted_user_key=o / "untrusted-user/userkey.pem",
            voms_cert=o / "voms/vomscert.pem",
            voms_key=o / "voms/vomskey.pem",
            rogue_voms_cert=o / "rogue-voms/vomscert.pem",
            rogue_voms_key=o / "rogue-voms/vomskey.pem",
            vomsdir=o / "vomsdir",
            **{f"proxy_{n}": p / f"{n}.pem" for n in _PROXY_NAMES},
        )

    @property
    def proxies(self) -> dict[str, Path]:
        """Proxy name (``voms``, ``plain``, ...) -> file."""
        return {n: getattr(self, f"proxy_{n}") for n in _PROXY_NAMES}

    def files(self) -> list[Path]:
        """Every path above except ``root`` (``ca_dir`` and ``vomsdir`` are folders)."""
        return [
            v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v != self.root
        ]

    def env(self, proxy: Path | None = None) -> dict[str, str]:
        """Grid client variables (merge into ``os.environ`` yourself); default proxy_voms."""
        return {
            "X509_CERT_DIR": str(self.ca_dir),
            "X509_VOMS_DIR": str(self.vomsdir),
            "X509_USER_PROXY": str(proxy or self.proxy_voms),
        }


_PROXY_NAMES = (
    "voms",
    "plain",
    "voms_user_only",
    "expired",
    "untrusted",
    "rogue_ac",
    "expired_ac",
    "limited",
    "other_user",
)


def build_test_pki(out: Path, *, max_age: float = 6 * 3600) -> TestPKI:
    """Create (or reuse, if built less than ``max_age`` seconds ago) the test PKI in ``out``."""
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = TestPKI.at(out)
    with open(out / ".testpki.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _reusable(pki, max_age):
            return pki
        for name in (_MARKER, *_OWNED):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        _generate(pki)
        marker = {"version": _LAYOUT_VERSION, "created": time.time()}
        (out / _MARKER).write_text(json.dumps(marker) + "\n")
    return pki


def _reusable(pki: TestPKI, max_age: float) -> bool:
    try:
        marker = json.loads((pki.root / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    fresh = time.time() - float(marker.get("created", 0)) < max_age
    return bool(marker.get("version") == _LAYOUT_VERSION and fresh) and all(
        p.exists() for p in pki.files()
    )


def _save(cert: x509.Certificate, key: rsa.RSAPrivateKey, cert_path: Path, key_path: Path) -> None:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    devpki.write_key(key_path, key)
    devpki.write_cert(cert_path, cert)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _p12(cert: Path, key: Path) -> bytes:
    """PKCS#12 (leaf + key) with an empty password, bags encrypted with it (AES-256, PBES2).

    Not cryptography's ``serialize_key_and_certificates(..., NoEncryption())``: that writes
    plain bags, which neon/GnuTLS (litmus ``-c``) refuses ("Can not read the client
    certificate"), and cryptography will not encrypt with an empty password.
    """
    cmd = ["openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key)]
    cmd += ["-name", "Test User", "-passout", "pass:"]
    return subprocess.run(cmd, check=True, capture_output=True, stdin=subprocess.DEVNULL).stdout


def _generate(pki: TestPKI) -> None:
    ca, ca_key = devpki.make_ca(CA_PARTS)
    _save(ca, ca_key, pki.ca_cert, pki.ca_key)
    pki.ca_crl.write_bytes(_make_crl(ca, ca_key).public_bytes(serialization.Encoding.PEM))
    devpki.install_ca(pki.ca_dir, pki.ca_cert, pki.ca_crl)

    bad_ca, bad_ca_key = devpki.make_ca(UNTRUSTED_CA_PARTS)
    _save(bad_ca, bad_ca_key, pki.untrusted_ca_cert, pki.untrusted_ca_key)

    host = devpki.issue_cert(ca, ca_key, HOST_PARTS, hostnames=("localhost", "127.0.0.1"))
    _save(*host, pki.host_cert, pki.host_key)
    user, user_key = devpki.issue_cert(ca, ca_key, USER_PARTS, server=False)
    _save(user, user_key, pki.user_cert, pki.user_key)
    _write_private(pki.user_p12, _p12(pki.user_cert, pki.user_key))
    other = devpki.issue_cert(ca, ca_key, OTHER_USER_PARTS, server=False)
    _save(*other, pki.other_user_cert, pki.other_user_key)
    impostor = devpki.issue_cert(bad_ca, bad_ca_key, USER_PARTS, server=False)
    _save(*impostor, pki.untrusted_user_cert, pki.untrusted_user_key)
    voms = devpki.issue_cert(ca, ca_key, VOMS_PARTS, hostnames=(VOMS_HOST,))
    _save(*voms, pki.voms_cert, pki.voms_key)
    rogue = devpki.issue_cert(ca, ca_key, ROGUE_VOMS_PARTS, hostnames=("rogue-voms.localhost",))
    _save(*rogue, pki.rogue_voms_cert, pki.rogue_voms_key)

    for vo in (VO, OTHER_VO):
        (pki.vomsdir / vo).mkdir(parents=True, exist_ok=True)
        (pki.vomsdir / vo / f"{VOMS_HOST}.lsc").write_text(f"{VOMS_DN}\n{CA_DN}\n")

    _make_proxies(pki)


def _make_proxies(pki: TestPKI) -> None:
    """Run voms-proxy-fake for every proxy, in parallel (each call takes ~0.2 s)."""
    pki.proxy_voms.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def ac(vo: str, fqans: Sequence[str], hours: int = 24, rogue: bool = False) -> list[str]:
        signer = (
            (pki.rogue_voms_cert, pki.rogue_voms_key) if rogue else (pki.voms_cert, pki.voms_key)
        )
        args = ["-voms", vo, "-uri", VOMS_URI, "-vomslife", str(hours)]
        args += ["-hostcert", str(signer[0]), "-hostkey", str(signer[1])]
        return args + [a for f in fqans for a in ("-fqan", f)]

    user = (pki.user_cert, pki.user_key)
    specs: dict[Path, tuple[tuple[Path, Path], list[str]]] = {
        pki.proxy_voms: (user, ["-hours", "24", *ac(VO, FQANS)]),
        pki.proxy_plain: (user, ["-hours", "24"]),
        pki.proxy_voms_user_only: (user, ["-hours", "12", *ac(VO, ["/testvo"])]),
        # notBefore = now - 1:30 - 5 min (voms-proxy-fake's skew), notAfter = now - 30 min
        pki.proxy_expired: (user, ["-hours", "1", "-pastproxy", "1:30", *ac(VO, FQANS)]),
        pki.proxy_untrusted: (
            (pki.untrusted_user_cert, pki.untrusted_user_key),
            ["-hours", "12", *ac(VO, FQANS)],
        ),
        pki.proxy_rogue_ac: (user, ["-hours", "12", *ac(VO, FQANS, rogue=True)]),
        # B13 P1: AC /testvo/Role=production valid 1 h starting 2 h ago -> expired 1 h ago
        pki.proxy_expired_ac: (
            user,
            ["-hours", "12", "-pastac", "2:00", *ac(VO, [FQANS[1]], hours=1)],
        ),
        pki.proxy_limited: (user, ["-hours", "12", "-limited", *ac(VO, FQANS)]),
        pki.proxy_other_user: (
            (pki.other_user_cert, pki.other_user_key),
            ["-hours", "12", *ac(OTHER_VO, ["/othervo"])],
        ),
    }
    env = {**os.environ, "RANDFILE": os.devnull}
    running: list[tuple[Path, list[str], subprocess.Popen[bytes]]] = []
    for target, ((cert, key), extra) in specs.items():
        cmd = ["voms-proxy-fake", "-q", "-rfc", "-bits", "2048", "-certdir", str(pki.ca_dir)]
        cmd += ["-cert", str(cert), "-key", str(key), "-out", str(target), *extra]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        running.append((target, cmd, proc))
    failures = []
    for target, cmd, proc in running:
        output, _ = proc.communicate(timeout=60)
        if proc.returncode != 0 or not target.is_file():
            failures.append(
                f"{' '.join(cmd)} -> rc={proc.returncode}: {output.decode(errors='replace')}"
            )
        else:
            target.chmod(0o600)
    if failures:
        raise RuntimeError("voms-proxy-fake failed:\n" + "\n".join(failures))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m testbed.pki OUT", file=sys.stderr)
        return 2
    pki = build_test_pki(Path(args[0]))
    for field in dataclasses.fields(pki):
        print(f"{field.name:22} {getattr(pki, field.name)}")
    for name, value in pki.env().items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
