"""The development token issuer of the embedded default: one ES256 key under the state folder.

The gateway trusts it through a static ``jwks_file`` (no network), and ``segate token`` mints
WLCG-profile tokens with it (``wlcg.ver`` "1.0", as peers still require; PROTOCOLS.md §1.1).
For development and tests only: anyone who can read the state folder can mint tokens.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

KID = "segate-dev-1"


@dataclass(frozen=True, slots=True)
class DevIssuer:
    issuer: str
    key_file: Path
    jwks_file: Path

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def mint(
        self,
        *,
        scope: str | None,
        audience: str | list[str],
        lifetime: int = 3600,
        subject: str = "dev-user",
        groups: list[str] | None = None,
        now: float | None = None,
    ) -> str:
        t = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": t,
            "nbf": t - 60,
            "exp": t + lifetime,
            "jti": str(uuid.uuid4()),
            "wlcg.ver": "1.0",
        }
        if scope:
            claims["scope"] = scope
        if groups:
            claims["wlcg.groups"] = groups
        return jwt.encode(claims, self._key(), algorithm="ES256", headers={"kid": KID})


def ensure_dev_issuer(state_dir: Path, issuer: str) -> DevIssuer:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    dev = DevIssuer(
        issuer=issuer,
        key_file=state_dir / "issuer-es256.key",
        jwks_file=state_dir / "issuer-jwks.json",
    )
    if not dev.key_file.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(dev.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    if not dev.jwks_file.exists():
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(dev._key().public_key()))
        jwk.update({"kid": KID, "alg": "ES256", "use": "sig"})
        dev.jwks_file.write_text(json.dumps({"keys": [jwk]}, indent=1))
    return dev
