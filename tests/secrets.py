"""Secret hygiene for every test (issue #8, field report B09).

``SecretWatch`` records every credential the test minted (dev-issuer and TestIssuer JWTs,
every serialised macaroon), every log record of the process and, for in-process gateways
(``watch_app``), every ``Location`` header and every error body (status >= 400) the gateway
sent. ``assert_clean`` fails if the signature of any of those credentials shows up there.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

import testbed.issuer as test_issuer
from segate.devissuer import DevIssuer

_current: SecretWatch | None = None


def _needles(secret: str) -> list[str]:
    """What must never appear: the JWT signature part, or a macaroon's tail (its signature)."""
    if secret.count(".") == 2:
        sig = secret.rsplit(".", 1)[1]
        return [sig] if len(sig) >= 16 else []
    tail = secret.rstrip("=")[-32:]
    return [tail] if len(tail) >= 16 else []


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class SecretWatch:
    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.seen: list[tuple[str, str]] = []  # (where, text)
        self._handler = _Collect()
        self._undo: list[tuple[Any, str, Any]] = []
        self._level = logging.NOTSET

    # -- recording ---------------------------------------------------------------------------
    def add(self, secret: str) -> str:
        self.secrets.add(secret)
        return secret

    def _patch(self, owner: Any, name: str, wrapper: Any) -> None:
        self._undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, wrapper)

    def __enter__(self) -> SecretWatch:
        global _current
        _current = self
        from pymacaroons import Macaroon

        dev_mint = DevIssuer.mint
        iss_encode = test_issuer.encode
        serialize = Macaroon.serialize

        def mint(issuer: DevIssuer, **kw: Any) -> str:
            return self.add(dev_mint(issuer, **kw))

        def encode(*a: Any, **kw: Any) -> str:
            return self.add(iss_encode(*a, **kw))

        def ser(mac: Any, *a: Any, **kw: Any) -> str:
            out: str = serialize(mac, *a, **kw)
            return self.add(out)

        self._patch(DevIssuer, "mint", mint)
        self._patch(test_issuer, "encode", encode)
        self._patch(Macaroon, "serialize", ser)
        seg = logging.getLogger("segate")
        self._level = seg.level
        seg.setLevel(logging.DEBUG)
        logging.getLogger().addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        global _current
        _current = None
        logging.getLogger().removeHandler(self._handler)
        logging.getLogger("segate").setLevel(self._level)
        for owner, name, old in reversed(self._undo):
            setattr(owner, name, old)

    # -- checking ----------------------------------------------------------------------------
    def texts(self) -> list[tuple[str, str]]:
        out = list(self.seen)
        fmt = logging.Formatter()
        for r in self._handler.records:
            try:
                out.append((f"log {r.name}", fmt.format(r)))
            except Exception:  # a record whose args do not format: still check its parts
                out.append((f"log {r.name}", f"{r.msg!r} {r.args!r}"))
        return out

    def assert_clean(self) -> None:
        texts = self.texts()
        for secret in self.secrets:
            for needle in _needles(secret):
                for where, text in texts:
                    assert needle not in text, f"credential leaked into {where}: {text[:300]!r}"


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    watch = _current
    if watch is None:
        return
    for value in response.headers.getall("Location", []):
        watch.seen.append(("Location header", value))
    for key, value in response.headers.items():
        if key.lower().startswith("www-authenticate"):
            watch.seen.append((f"{key} header", value))
    body = getattr(response, "body", None)
    if response.status >= 400 and isinstance(body, bytes | bytearray):
        watch.seen.append((f"{response.status} body", bytes(body).decode("utf-8", "replace")))


def watch_app(app: web.Application) -> None:
    """Record the Location headers and error bodies an in-process gateway sends."""
    app.on_response_prepare.append(_on_prepare)
