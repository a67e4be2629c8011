"""The HTTP client of the active party: one session, redirect policy, credential forwarding.

Rules (PROTOCOLS.md §4.5-4.6, PEERS.md §4, field reports B21, B26):

* One ``aiohttp.ClientSession`` per gateway, created on first use inside the running loop and
  closed with the app (``Services.closers``). It connects only through the guarded resolver
  (netguard.py); proxies from the environment are ignored; bodies are never decompressed and
  ``Accept-Encoding: identity`` is sent, so the bytes stored are the bytes served.
* Header names are sent with canonical spellings (XRootD 5.5.3 matches names with strcmp), in
  the order given; ``User-Agent: segate-tpc/<version>``.
* Redirects are followed here, not by aiohttp: at most ``[tpc] max_redirects`` hops (then
  ``failure``; a loop A->B->A ends the same way), ``Location`` resolved against the current URL
  (relative forms, davix DMC-1209), kept byte for byte otherwise (its query often carries the
  credential), every hop checked by the guard, https->http refused. GET/HEAD follow 301, 302,
  303, 307, 308; PUT follows 301, 302, 307, 308 with the same method and body (303 would turn it
  into a GET: refused).
* Forwarded credentials (``Authorization``, ``Cookie``, ...) go to the first host and to any hop
  on the same host and port; to another host only with ``[tpc]
  forward_credentials_across_hosts`` (xrootd#2228: default off; StoRM and dCache always drop).
* Timeouts: ``[tpc] connect_timeout`` bounds TCP connect and TLS handshake; the engine's idle
  watchdog bounds everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from multidict import CIMultiDict
from yarl import URL

from segate import __version__
from segate.config import TpcConfig
from segate.tpc.netguard import GuardedResolver, NetGuard, RefusedRemote, Unresolvable
from segate.tpc.parse import CREDENTIAL_HEADERS

USER_AGENT = f"segate-tpc/{__version__}"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: aiohttp read buffer per connection; larger than the 64 KiB default for fewer wake-ups
READ_BUFSIZE = 1 << 20
_URL_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
)


if TYPE_CHECKING:
    from aiohttp.tracing import Trace


class TransferFailed(Exception):
    """A transfer cannot complete; the message becomes the ``failure:`` line."""


def strip_query(url: URL | str) -> str:
    """The URL for messages: no query (signed URLs and tokens live there), no userinfo."""
    u = url if isinstance(url, URL) else URL(url, encoded=True)
    try:
        return str(u.with_query(None).with_fragment(None).with_user(None))
    except ValueError:
        return str(u).partition("?")[0]


def parse_location(base: URL, location: str) -> URL:
    """Resolve a ``Location`` against ``base``; kept as sent when it is a well-formed URL."""
    if any(c not in _URL_CHARS for c in location):
        # a Location with raw spaces etc. (xrootd#1293): let yarl percent-encode it
        return base.join(URL(location))
    return base.join(URL(location, encoded=True))


@dataclass
class Hop:
    method: str
    url: URL


@dataclass
class RequestSpec:
    method: str
    url: str
    #: forwarded (TransferHeader) headers, canonical names
    forwarded: tuple[tuple[str, str], ...] = ()
    #: headers of this request only (Range, Want-Digest, Content-Length)
    extra: dict[str, str] = field(default_factory=dict)
    #: for PUT: makes a fresh body iterator (redirects re-send the body)
    body: Callable[[], AsyncIterable[bytes | bytearray] | bytes] | None = None
    expect100: bool = False


PeerCallback = Callable[[str, int], None]


class HeldConnections:
    """The connections one transfer opened, so a failed transfer can drop them hard.

    ``transport.close()`` waits until buffered data is sent, and even a closed socket keeps its
    unsent data in the kernel; a remote that stopped reading would hold both for a long time.
    On failure every connection the transfer still holds, or that aiohttp is closing
    gracefully, is reset (``SO_LINGER`` 0 + abort). Idle connections already back in the pool
    (released after a complete response) are kept.
    """

    def __init__(self) -> None:
        self.items: list[tuple[Connection, asyncio.Transport]] = []

    def add(self, conn: Connection, transport: asyncio.Transport) -> None:
        # forget connections released to the pool: never aborted, and a long multi-stream
        # transfer makes thousands of requests
        self.items = [(c, t) for c, t in self.items if c.protocol is not None or t.is_closing()]
        self.items.append((conn, transport))

    def abort(self) -> None:
        for conn, transport in self.items:
            if conn.protocol is not None or transport.is_closing():
                sock = transport.get_extra_info("socket")
                if sock is not None:  # RST: do not leave unsent data queued in the kernel
                    # uvloop hands out a closed socket object (fd -1 -> ValueError)
                    with contextlib.suppress(OSError, ValueError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                transport.abort()
        self.items.clear()


_LINGER_RESET = struct.pack("ii", 1, 0)
_HELD: ContextVar[HeldConnections | None] = ContextVar("segate_tpc_held", default=None)


def track_connections() -> HeldConnections:
    """Record the connections made from the current context (and tasks started from it)."""
    held = HeldConnections()
    _HELD.set(held)
    return held


class _TrackingConnector(aiohttp.TCPConnector):
    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        held = _HELD.get()
        if held is not None and conn.transport is not None:
            held.add(conn, conn.transport)
        return conn


class RemoteClient:
    def __init__(self, cfg: TpcConfig, guard: NetGuard, ssl_context: Any) -> None:
        self.cfg = cfg
        self.guard = guard
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = _TrackingConnector(
                resolver=GuardedResolver(self.guard),
                ssl=self.ssl_context,
                limit=0,
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=False,
                read_bufsize=READ_BUFSIZE,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.cfg.connect_timeout,
                    sock_connect=self.cfg.connect_timeout,
                    sock_read=None,
                ),
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, spec: RequestSpec, *, with_credentials: bool) -> CIMultiDict[str]:
        h: CIMultiDict[str] = CIMultiDict(
            {"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"}
        )
        for name, value in spec.forwarded:
            if not with_credentials and name.lower() in CREDENTIAL_HEADERS:
                continue
            if name.lower() in ("user-agent", "accept"):
                h[name] = value  # replaces ours
            else:
                h.add(name, value)
        for name, value in spec.extra.items():
            h[name] = value
        return h

    async def request(
        self, spec: RequestSpec, on_peer: PeerCallback | None = None
    ) -> aiohttp.ClientResponse:
        """Send ``spec``, following redirects. The caller must release the response."""
        first = URL(spec.url, encoded=True)
        url = first
        method = spec.method
        hops: list[Hop] = []
        while True:
            await self._vet(url)
            same_origin = (url.host, url.port) == (first.host, first.port)
            creds = same_origin or self.cfg.forward_credentials_across_hosts
            headers = self._headers(spec, with_credentials=creds)
            data: Any = spec.body() if spec.body is not None else None
            try:
                resp = await self.session().request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    expect100=spec.expect100,
                )
            except aiohttp.ClientConnectorError as exc:
                raise TransferFailed(
                    f"cannot connect to {strip_query(url)}: {_os_reason(exc)}"
                ) from exc
            except TimeoutError as exc:
                raise TransferFailed(
                    f"connecting to {strip_query(url)} timed out after "
                    f"{self.cfg.connect_timeout:g} s"
                ) from exc
            except aiohttp.ClientError as exc:
                raise TransferFailed(
                    f"{method} {strip_query(url)} failed: {_client_reason(exc)}"
                ) from exc
            location = resp.headers.get("Location")
            if resp.status not in REDIRECTS or not location:
                peer = _peer(resp)
                if on_peer is not None and peer is not None:
                    on_peer(*peer)
                return resp
            resp.release()
            if method == "PUT" and resp.status == 303:
                raise TransferFailed(f"PUT {strip_query(url)} was answered 303 See Other")
            hops.append(Hop(method, url))
            if len(hops) > self.cfg.max_redirects:
                raise TransferFailed(
                    f"too many redirects (more than {self.cfg.max_redirects}) "
                    f"starting at {strip_query(first)}"
                )
            try:
                nxt = parse_location(url, location)
            except ValueError as exc:
                raise TransferFailed(f"unusable redirect Location from {strip_query(url)}") from exc
            if nxt.raw_user is not None or nxt.raw_password is not None:
                raise TransferFailed(f"redirect from {strip_query(url)} with credentials refused")
            if url.scheme == "https" and nxt.scheme == "http":
                raise TransferFailed(
                    f"redirect from {strip_query(url)} to plain http refused (downgrade)"
                )
            url = nxt

    async def _vet(self, url: URL) -> None:
        try:
            await self.guard.vet(url)
        except RefusedRemote as exc:
            raise TransferFailed(f"refused to contact {strip_query(url)}: {exc}") from exc
        except Unresolvable as exc:
            raise TransferFailed(str(exc)) from exc


def _peer(resp: aiohttp.ClientResponse) -> tuple[str, int] | None:
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return None


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    cause = exc.__cause__
    if cause is not None and not isinstance(cause, aiohttp.ClientError):
        os_error = cause if isinstance(cause, OSError) else os_error
    text = os_error.strerror or str(os_error) if isinstance(os_error, OSError) else str(exc)
    return text or type(os_error).__name__


def _client_reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):  # its str() carries the URL and query
        return f"{exc.status}, {exc.message}"
    return str(exc) or type(exc).__name__
