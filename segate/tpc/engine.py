"""One third-party transfer: pull (single or multi-stream) or push, with an idle watchdog.

A failed transfer also resets the connections it still holds (client.HeldConnections), so a
remote that stopped reading cannot keep a socket and its buffers alive.

Rules (PROTOCOLS.md §4.3, §4.8-4.10; field reports B22, B24, B25, B26):

* Pull writes into ``storage.new_upload`` (a hidden staging file) and commits only when the
  body is complete, its length matches what the remote announced (HEAD and/or GET
  ``Content-Length``) and, with ``RequireChecksumVerification: true``, the adler32 of the bytes
  received equals the remote's ``Digest`` (HEAD ``Want-Digest: adler32``). Success is reported
  only after the commit and after the checksum is recorded with the file (xrootd#1314). Any
  failure, cancellation or client disconnect aborts the upload: nothing is left at the
  destination and the staging file is removed (§4.9 recommendation).
* A failing HEAD is not fatal (signed URLs often allow GET only); the GET status decides.
  ``Copy-Flags: NoHead`` skips it.
* Multi-stream (``X-Number-Of-Streams`` > 1, remote size known, not ``Accept-Ranges: none``):
  blocks of :data:`BLOCK` bytes (16 MiB, as XRootD) fetched by that many parallel ranged GETs
  and written at their offsets; each answer must be 206 with the matching ``Content-Range``.
  The first ranged GET is the probe (XRootD serves ranges without ``Accept-Ranges``): answered
  200, it is the whole file and the copy goes on as a single stream. Each block's adler32 is
  computed as it arrives and the blocks are joined (digest.py), so verification needs no
  second read.
* Push (push.py): one PUT with ``Content-Length`` streamed from storage.
* Reads and writes are pipelined in ``[storage] io_chunk`` blocks (4 MiB; streams.py): memory
  does not grow with file size; the disk write of one block overlaps the network read of the
  next.
* Watchdog: no byte received (pull) or sent (push) for ``[tpc] idle_timeout`` seconds ends the
  transfer with a failure that names the direction (B24, xrootd#2060).
* Byte counts for markers are bytes written to storage (pull) or handed to the socket (push):
  never more than really moved (B22, xrootd#2874).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from segate.config import TpcConfig
from segate.paths import LogicalPath
from segate.storage.base import ExistsError, StorageError
from segate.storage.posix import PosixStorage, PosixUpload
from segate.tpc.client import (
    HeldConnections,
    RemoteClient,
    RequestSpec,
    TransferFailed,
    track_connections,
)
from segate.tpc.digest import adler32_combine, adler32_from_digest, adler32_hex
from segate.tpc.parse import Mode, TransferRequest
from segate.tpc.push import push
from segate.tpc.streams import Progress, Sink, body_chunks, content_length, remote_error

BLOCK = 16 << 20


@dataclass(frozen=True, slots=True)
class PullTarget:
    path: LogicalPath
    #: replace an existing file (Overwrite not F and the credential may overwrite)
    overwrite: bool
    make_parents: bool


async def _drain(resp: aiohttp.ClientResponse, sink: Sink) -> None:
    try:
        async for data in body_chunks(resp):
            await sink.feed(data)
        await sink.close()
    except BaseException:
        await sink.cancel()
        raise


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    first: BaseException = group.exceptions[0]
    return first


def _start(op: Coroutine[Any, Any, None]) -> tuple[HeldConnections, asyncio.Task[None]]:
    held = track_connections()
    return held, asyncio.ensure_future(op)


def _as_failure(exc: BaseException, progress: Progress) -> TransferFailed:
    if isinstance(exc, ExistsError):
        return TransferFailed("the destination was created meanwhile; not replaced")
    if isinstance(exc, StorageError):
        return TransferFailed(f"local storage: {exc}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransferFailed(
            f"the connection to the remote broke after {progress.bytes_done} bytes: {exc}"
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransferFailed(f"transfer error: {exc or type(exc).__name__}")
    return TransferFailed(f"internal error: {type(exc).__name__}")


class Engine:
    def __init__(self, storage: PosixStorage, client: RemoteClient, cfg: TpcConfig) -> None:
        self.storage = storage
        self.client = client
        self.cfg = cfg
        self.chunk = storage.chunk
        #: multi-stream block size (tests make it smaller)
        self.block = max(BLOCK, self.chunk)

    # -- the watchdog ---------------------------------------------------------------------------
    async def run(
        self, req: TransferRequest, path: LogicalPath, progress: Progress, target: PullTarget | None
    ) -> None:
        """Run one transfer to the end. Raises TransferFailed with the reason."""
        op: Coroutine[Any, Any, None]
        if req.mode is Mode.PULL:
            assert target is not None
            op = self.pull(req, target, progress)
        else:
            op = self.push(req, path, progress)
        # the transfer's task records its connections (client.py); not the caller's context
        held, task = contextvars.copy_context().run(_start, op)
        try:
            await self._watch(req, task, progress)
            task.result()
        except BaseException as exc:
            held.abort()
            if isinstance(exc, TransferFailed | asyncio.CancelledError):
                raise
            raise _as_failure(exc, progress) from exc

    async def _watch(
        self, req: TransferRequest, task: asyncio.Future[None], progress: Progress
    ) -> None:
        idle = self.cfg.idle_timeout
        tick = min(1.0, idle / 4)
        progress.touch()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=tick)
                if done:
                    return
                if progress.clock() - progress.last_activity >= idle:
                    break
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if req.mode is Mode.PULL:
            raise TransferFailed(
                f"no bytes received from the source in {idle:g} seconds (pull mode)"
            )
        raise TransferFailed(f"no bytes sent to the destination in {idle:g} seconds (push mode)")

    # -- pull -----------------------------------------------------------------------------------
    async def pull(self, req: TransferRequest, target: PullTarget, progress: Progress) -> None:
        size: int | None = None
        digest: str | None = None
        ranges = True
        if not req.no_head or req.require_checksum:
            extra = {"Want-Digest": "adler32"} if req.require_checksum else {}
            spec = RequestSpec("HEAD", req.remote, req.headers, extra)
            resp = await self.client.request(spec, progress.peer)
            try:
                progress.touch()
                if 200 <= resp.status < 300 and resp.status != 202:
                    size = content_length(resp)
                    digest = adler32_from_digest(resp.headers.getall("Digest", []))
                    # XRootD serves ranges without saying so; only "none" rules them out
                    ranges = "none" not in resp.headers.get("Accept-Ranges", "").lower()
                elif req.require_checksum:
                    raise await remote_error(resp, "HEAD")
            finally:
                resp.release()
            if req.require_checksum and digest is None:
                raise TransferFailed(
                    "the source sent no adler32 checksum (RequireChecksumVerification: true)"
                )
        upload = await self.storage.new_upload(target.path)
        try:
            adler: str | None
            received, adler = await self._receive(req, upload, progress, size, ranges)
            if size is not None and received != size:
                raise TransferFailed(f"received {received} bytes but the source announced {size}")
            if digest is not None and req.require_checksum and adler != digest:
                raise TransferFailed(
                    f"checksum mismatch: source adler32 {digest}, received data {adler}"
                )
            await upload.commit(overwrite=target.overwrite, make_parents=target.make_parents)
        except BaseException:
            await upload.abort()
            raise
        recorded = await self.storage.checksum(target.path, "adler32")
        if adler is not None and recorded != adler:
            with contextlib.suppress(StorageError):
                await self.storage.delete(target.path)
            raise TransferFailed(f"stored file has adler32 {recorded}, received data {adler}")

    async def _receive(
        self,
        req: TransferRequest,
        upload: PosixUpload,
        progress: Progress,
        size: int | None,
        ranges: bool,
    ) -> tuple[int, str | None]:
        """One GET, or ranged GETs in parallel. The first ranged GET doubles as the probe: a
        source that answers it 200 sends the whole file, which is then taken as it comes."""
        want_adler = req.require_checksum
        if not (req.streams > 1 and ranges and size is not None and size > self.block):
            resp = await self._get(req, progress)
            return await self._whole(resp, upload, progress, size, want_adler=want_adler)
        first = await self._get(req, progress, 0, self.block)
        if first.status == 200:
            return await self._whole(first, upload, progress, size, want_adler=want_adler)
        return await self._multi(req, upload, progress, size, first)

    async def _get(
        self, req: TransferRequest, progress: Progress, off: int = 0, n: int | None = None
    ) -> aiohttp.ClientResponse:
        extra = {} if n is None else {"Range": f"bytes={off}-{off + n - 1}"}
        spec = RequestSpec("GET", req.remote, req.headers, extra)
        resp = await self.client.request(spec, progress.peer)
        progress.touch()
        return resp

    async def _whole(
        self,
        resp: aiohttp.ClientResponse,
        upload: PosixUpload,
        progress: Progress,
        size: int | None,
        *,
        want_adler: bool,
    ) -> tuple[int, str | None]:
        try:
            if resp.status != 200:
                raise await remote_error(resp, "GET")
            length = content_length(resp)
            if size is not None and length is not None and length != size:
                raise TransferFailed(f"the source size changed: HEAD said {size}, GET {length}")

            async def write(_pos: int, parts: list[bytes], _adler: int | None) -> None:
                await upload.write_parts(parts)  # one executor hop; the upload keeps the adler32

            sink = Sink(write, 0, self.chunk, progress, adler=False)
            await _drain(resp, sink)
            expected = length if length is not None else size
            if expected is not None and sink.received != expected:
                raise TransferFailed(
                    f"the source sent {sink.received} bytes but announced {expected}"
                )
            return sink.received, upload.adler32 if want_adler else None
        finally:
            resp.release()

    async def _multi(
        self,
        req: TransferRequest,
        upload: PosixUpload,
        progress: Progress,
        size: int,
        first: aiohttp.ClientResponse,
    ) -> tuple[int, str]:
        block = self.block
        offsets = iter(range(block, size, block))
        results: dict[int, tuple[int, int]] = {}

        async def worker(resp: aiohttp.ClientResponse | None) -> None:
            if resp is not None:
                results[0] = (await self._range(resp, upload, progress, 0, block, size), block)
            for off in offsets:  # one shared iterator: each block is taken once
                n = min(block, size - off)
                part = await self._get(req, progress, off, n)
                results[off] = (await self._range(part, upload, progress, off, n, size), n)

        streams = min(req.streams, (size + block - 1) // block)
        progress.streams = streams
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(worker(first))
                for _ in range(streams - 1):
                    tg.create_task(worker(None))
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            first.release()
        total, adler = 0, 1
        for off in sorted(results):
            value, n = results[off]
            adler = adler32_combine(adler, value, n)
            total += n
        return total, adler32_hex(adler)

    async def _range(
        self,
        resp: aiohttp.ClientResponse,
        upload: PosixUpload,
        progress: Progress,
        off: int,
        n: int,
        size: int,
    ) -> int:
        last = off + n - 1
        try:
            if resp.status == 200:
                raise TransferFailed("the source ignored the Range request of a multi-stream pull")
            if resp.status != 206:
                raise await remote_error(resp, "GET")
            want = f"bytes {off}-{last}/{size}"
            if resp.headers.get("Content-Range", "").strip() != want:
                raise TransferFailed(f"the source answered a range other than {want!r}")

            sink = Sink(upload.write_parts_at, off, self.chunk, progress, adler=True)
            await _drain(resp, sink)
            if sink.received != n:
                raise TransferFailed(f"range {off}-{last}: received {sink.received} of {n} bytes")
            assert sink.adler is not None
            return sink.adler
        finally:
            resp.release()

    # -- push (push.py) -------------------------------------------------------------------------
    async def push(self, req: TransferRequest, path: LogicalPath, progress: Progress) -> None:
        await push(self.client, self.storage, req, path, progress)
