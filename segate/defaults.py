"""The embedded default configuration: ``segate serve`` with no ``--config``.

Serves ``./segate-data`` on https://localhost:8443/ (loopback only). A dev CA, host certificate,
macaroon secret and dev token-issuer key are created once under the state folder
(``./.segate-state``, or ``$SEGATE_STATE``) and reused. The dev issuer is trusted with base
path ``/`` through a static JWKS file.
"""

from __future__ import annotations

import os
from pathlib import Path

from segate.devissuer import DevIssuer, ensure_dev_issuer
from segate.devpki import DevPKI, ensure_dev_pki

DEV_ISSUER = "https://localhost:8443/dev-issuer"

TEMPLATE = """\
[server]
listen = "127.0.0.1:8443"
cert = "{state}/hostcert.pem"
key = "{state}/hostkey.pem"
ca_dir = "{state}/certificates"
workers = 1

[storage]
root = "{data}"
create_parents = true

[tokens]
audiences = []
accept_any_audience = true
leeway = 60

[[tokens.issuers]]
issuer = "{issuer}"
base_path = "/"
profile = "wlcg"
jwks_file = "{state}/issuer-jwks.json"

[macaroons]
secret_file = "{state}/macaroon-secret"
"""


def state_dir() -> Path:
    return Path(os.environ.get("SEGATE_STATE", ".segate-state")).resolve()


def data_dir() -> Path:
    return Path(os.environ.get("SEGATE_DATA", "segate-data")).resolve()


def prepare_default(state: Path, data: Path) -> tuple[str, DevPKI, DevIssuer]:
    """Create what the default needs (once) and return its TOML text."""
    pki = ensure_dev_pki(state)
    dev = ensure_dev_issuer(state, DEV_ISSUER)
    data.mkdir(parents=True, exist_ok=True)
    text = TEMPLATE.format(state=state.as_posix(), data=data.as_posix(), issuer=DEV_ISSUER)
    return text, pki, dev
