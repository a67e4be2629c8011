"""The "legacy" endpoint of the testbed: a plain WebDAV server (wsgidav on cheroot, HTTPS).

It knows nothing about storage scopes, macaroons or X.509: a request passes only with
``Authorization: Bearer <JWT>`` signed by one of the keys in ``--jwks`` and issued by
``--issuer`` (signature, ``iss`` and ``exp`` are checked; audience and scopes are not, as with
a site that only checks "a valid token from our issuer"). Anything else gets 401.

It can be the source or destination of a streamed copy, and the passive party of a third-party
copy, but never the active one (it has no HTTP-TPC). Run by :mod:`testbed.grid` as a subprocess::

    python -m testbed.webdav_peer --root DIR --port P --cert C --key K --jwks F --issuer URL
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jwt
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from wsgidav.wsgidav_app import WsgiDAVApp

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def jwt_gate(app: WsgiApp, jwks: dict[str, Any], issuer: str) -> WsgiApp:
    keys = {k["kid"]: jwt.PyJWK(k) for k in jwks["keys"]}

    def valid(header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        token = header[len("Bearer ") :]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = keys.get(str(kid))
            if key is None:
                return False
            jwt.decode(
                token,
                key.key,
                algorithms=["RS256", "ES256"],
                issuer=issuer,
                options={"verify_aud": False, "require": ["exp", "iss"]},
            )
        except jwt.PyJWTError:
            return False
        return True

    def gated(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not valid(environ.get("HTTP_AUTHORIZATION")):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [] if environ["REQUEST_METHOD"] == "HEAD" else [b"bearer token required\n"]
        return app(environ, start_response)

    return gated


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.webdav_peer")
    for name in ("--root", "--cert", "--key", "--jwks", "--issuer"):
        ap.add_argument(name, required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    config = {
        "host": "127.0.0.1",
        "port": args.port,
        "provider_mapping": {"/": str(Path(args.root))},
        "simple_dc": {"user_mapping": {"*": True}},  # anonymous inside the bearer gate
        "verbose": 0,
        "logging": {"enable": False},
    }
    jwks = json.loads(Path(args.jwks).read_text())
    app = jwt_gate(WsgiDAVApp(config), jwks, args.issuer)
    server = wsgi.Server(("127.0.0.1", args.port), app)
    server.ssl_adapter = BuiltinSSLAdapter(args.cert, args.key)

    def stop(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt  # cheroot's serve loop stops on it (server.stop() here hangs)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
