"""The authenticator chain: which credential in a request speaks, and whether it is valid.

Precedence (PROTOCOLS.md §5.5, issue #4): a bearer credential in the request (header, else
``authz=``/``access_token=`` query) decides when present; exactly one bearer authenticator
recognises it by shape (macaroon vs JWT) and must verify it, else the request is a 401. It
never falls back to the client certificate or to anonymous. Without a bearer credential the
client certificate chain is used; with neither the request is anonymous.

Authenticators state facts and never judge: they return a Principal or raise Unauthenticated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from segate.auth.principal import ANONYMOUS, Principal
from segate.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything a request offers as credentials, parsed at the edge into plain values."""

    bearer: str | None = None
    #: "header" or "query": where the bearer came from (for logs and policy)
    bearer_source: str = ""
    #: the verified peer certificate chain, DER, leaf first (empty: no client certificate)
    peer_chain: tuple[bytes, ...] = ()
    client_ip: str = ""
    #: the request's own host (for audience defaults and macaroon locations)
    host: str = ""


class BearerAuthenticator(Protocol):
    name: str

    def recognises(self, token: str) -> bool:
        """Cheap shape test: is this credential mine to verify? No crypto, no I/O."""
        ...

    async def authenticate(self, token: str, creds: Credentials) -> Principal:
        """Verify and describe. Raise Unauthenticated with a one-line reason."""
        ...


class CertAuthenticator(Protocol):
    name: str

    async def authenticate(self, creds: Credentials) -> Principal: ...


class AuthChain:
    def __init__(
        self,
        bearer: Sequence[BearerAuthenticator] = (),
        cert: CertAuthenticator | None = None,
    ) -> None:
        self.bearer = tuple(bearer)
        self.cert = cert

    def add_bearer(self, auth: BearerAuthenticator, *, first: bool = False) -> None:
        self.bearer = (auth, *self.bearer) if first else (*self.bearer, auth)

    async def authenticate(self, creds: Credentials) -> Principal:
        if creds.bearer is not None:
            token = creds.bearer.strip()
            if not token:
                raise Unauthenticated("empty bearer credential")
            for auth in self.bearer:
                if auth.recognises(token):
                    return await auth.authenticate(token, creds)
            raise Unauthenticated(
                "bearer credential is neither a JWT nor a macaroon of this server"
            )
        if creds.peer_chain and self.cert is not None:
            return await self.cert.authenticate(creds)
        return ANONYMOUS
