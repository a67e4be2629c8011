"""Moving bytes between a remote's response and storage, and counting them. No policy here.

* :class:`Progress`: bytes moved (for perf markers: only bytes really written to storage or
  handed to the socket, never more; B22, xrootd#2874), the remote endpoints seen (for
  ``RemoteConnections``) and the time of the last activity (for the idle watchdog, B24).
* :class:`Sink`: collects network data into ``[storage] io_chunk`` blocks (4 MiB) and writes each
  block while the next one is being received, optionally having the writer compute adler32
  in the same pass; memory stays at about two blocks whatever the file size.
* :func:`remote_error`: the ``failure:`` text for a remote's error status, with a short,
  bounded excerpt of its body (XRootD style: ``Remote side failed with status code 403``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from segate.tpc.client import TransferFailed, strip_query
from segate.tpc.markers import format_endpoint, one_line

_ERROR_BODY = 300


@dataclass
class Progress:
    clock: Callable[[], float] = time.monotonic
    bytes_done: int = 0
    remotes: list[str] = field(default_factory=list)
    #: parallel connections used for the data (multi-stream pull)
    streams: int = 1
    last_activity: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_activity = self.clock()

    def advance(self, n: int) -> None:
        self.bytes_done += n
        self.touch()

    def peer(self, ip: str, port: int) -> None:
        ep = format_endpoint(ip, port)
        if ep not in self.remotes:
            self.remotes.append(ep)


#: writes the pieces of one block at a file offset (pieces as received: no join, no copy);
#: given the running adler32 (or None) it returns it updated over the pieces (or None)
Writer = Callable[[int, list[bytes], int | None], Awaitable[int | None]]


class Sink:
    """Buffers network data into large blocks; writes each while the next one arrives.

    ``adler=True`` keeps a running adler32 that the writer updates as it writes each block
    (positional writes of a multi-stream pull); a sequential writer into an Upload gets it
    from the Upload itself and is passed None.
    """

    def __init__(self, write: Writer, base: int, chunk: int, progress: Progress, *, adler: bool):
        self._write = write
        self._pos = base
        self._chunk = chunk
        self._progress = progress
        self._parts: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Task[None] | None = None
        self.adler: int | None = 1 if adler else None
        self.received = 0

    async def feed(self, data: bytes) -> None:
        self._parts.append(data)
        self._buffered += len(data)
        self.received += len(data)
        self._progress.touch()
        if self._buffered >= self._chunk:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None
        if self._parts:
            parts, size = self._parts, self._buffered
            self._parts, self._buffered = [], 0
            pos, self._pos = self._pos, self._pos + size
            self._pending = asyncio.ensure_future(self._store(pos, parts, size))

    async def _store(self, pos: int, parts: list[bytes], size: int) -> None:
        # blocks are stored one at a time, in order (_flush waits): the running value chains
        adler = await self._write(pos, parts, self.adler)
        if self.adler is not None:
            assert adler is not None
            self.adler = adler
        self._progress.advance(size)

    async def close(self) -> None:
        await self._flush()
        await self._flush()

    async def cancel(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            with contextlib.suppress(BaseException):
                await self._pending


async def remote_error(resp: aiohttp.ClientResponse, what: str) -> TransferFailed:
    """``Remote side failed with status code 404 ...`` with a short excerpt of the body."""
    text = ""
    with contextlib.suppress(Exception):
        raw = await asyncio.wait_for(resp.content.read(_ERROR_BODY), 2.0)
        text = one_line(raw.decode("utf-8", "replace"))
    msg = f"remote side failed with status code {resp.status} ({what} {strip_query(resp.url)})"
    if text:
        msg += f"; error message: {text[:_ERROR_BODY]}"
    return TransferFailed(msg)


def content_length(resp: aiohttp.ClientResponse) -> int | None:
    raw = resp.headers.get("Content-Length", "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 20 else None


async def body_chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as aiohttp buffered it, piece by piece.

    ``readchunk`` hands over one buffered piece as it is; ``readany`` joins every piece
    buffered so far into a new ``bytes``: one more copy whenever more than one is waiting.
    With chunked transfer coding an empty piece marks the end of an HTTP chunk, not of the body.
    """
    content = resp.content
    while True:
        data, end_of_http_chunk = await content.readchunk()
        if data:
            yield data
        elif not end_of_http_chunk:
            return
