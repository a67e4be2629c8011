"""A development PKI for the embedded default and for tests: CA, CRL and host certificate.

Created once under a state folder and reused. The CA folder uses the OpenSSL hashed layout
(``<hash>.0`` for the CA, ``<hash>.r0`` for its CRL) that grid tools call ``X509_CERT_DIR`` and
that ``[server] ca_dir`` expects. Keys are written 0600 and never leave the state folder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DN = (("DC", "test"), ("DC", "segate"), ("CN", "segate dev CA"))


@dataclass(frozen=True, slots=True)
class DevPKI:
    ca_cert: Path
    ca_key: Path
    ca_dir: Path
    host_cert: Path
    host_key: Path


def name_from(parts: tuple[tuple[str, str], ...]) -> x509.Name:
    oids = {
        "DC": NameOID.DOMAIN_COMPONENT,
        "CN": NameOID.COMMON_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "C": NameOID.COUNTRY_NAME,
    }
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts])


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(
    dn: tuple[tuple[str, str], ...] = CA_DN,
    *,
    days: int = 3650,
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = new_key()
    name = name_from(dn)
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or (now - dt.timedelta(days=1)))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_cert(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    dn: tuple[tuple[str, str], ...],
    *,
    hostnames: tuple[str, ...] = (),
    server: bool = True,
    client: bool = True,
    days: int = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: rsa.RSAPrivateKey | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = key or new_key()
    now = dt.datetime.now(dt.UTC)
    eku = []
    if server:
        eku.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        eku.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    b = (
        x509.CertificateBuilder()
        .subject_name(name_from(dn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or (now - dt.timedelta(hours=1)))
        .not_valid_after(not_after or (now + dt.timedelta(days=days)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if hostnames:
        sans: list[x509.GeneralName] = []
        for h in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def make_crl(
    ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, revoked: tuple[int, ...] = ()
) -> x509.CertificateRevocationList:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(hours=1))
        .next_update(now + dt.timedelta(days=30))
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=5))
            .build()
        )
    return b.sign(ca_key, hashes.SHA256())


def subject_hash(cert_path: Path) -> str:
    """OpenSSL's subject_hash (the hashed-directory name); asks the openssl binary."""
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash", "-in", str(cert_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def install_ca(ca_dir: Path, ca_pem: Path, crl_pem: Path | None = None) -> None:
    """Put a CA (and its CRL) into a hashed directory as <hash>.0 / <hash>.r0."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    h = subject_hash(ca_pem)
    i = 0
    while (ca_dir / f"{h}.{i}").exists() and (
        ca_dir / f"{h}.{i}"
    ).read_bytes() != ca_pem.read_bytes():
        i += 1
    (ca_dir / f"{h}.{i}").write_bytes(ca_pem.read_bytes())
    if crl_pem is not None:
        (ca_dir / f"{h}.r{i}").write_bytes(crl_pem.read_bytes())


def ensure_dev_pki(
    state_dir: Path, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
) -> DevPKI:
    """Create (once) and return the dev CA, its hashed directory and a host certificate."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = DevPKI(
        ca_cert=state_dir / "ca.pem",
        ca_key=state_dir / "ca.key",
        ca_dir=state_dir / "certificates",
        host_cert=state_dir / "hostcert.pem",
        host_key=state_dir / "hostkey.pem",
    )
    if all(p.exists() for p in (pki.ca_cert, pki.ca_key, pki.host_cert, pki.host_key)):
        return pki
    ca_cert, ca_key = make_ca()
    write_key(pki.ca_key, ca_key)
    write_cert(pki.ca_cert, ca_cert)
    crl = make_crl(ca_cert, ca_key)
    crl_path = state_dir / "ca.crl.pem"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    install_ca(pki.ca_dir, pki.ca_cert, crl_path)
    host, hkey = issue_cert(
        ca_cert,
        ca_key,
        (("DC", "test"), ("DC", "segate"), ("CN", hostnames[0])),
        hostnames=hostnames,
    )
    write_key(pki.host_key, hkey)
    write_cert(pki.host_cert, host)
    return pki
