"""Push: send a local file to the passive party with one PUT (PROTOCOLS.md §4.1, §4.9-4.10).

* The body is streamed from storage with ``Content-Length`` (never chunked: XRootD and StoRM need
  the length). From :data:`EXPECT_CONTINUE_MIN` bytes (StoRM's 1 MiB) it carries ``Expect:
  100-continue``, so the remote can refuse or redirect before the body is sent.
* Such a push first sends a HEAD. Its ``Server`` header tells an XRootD, whose ``100 Continue``
  carries ``Connection: Close`` before the final answer on the same connection; aiohttp's
  parser (llhttp) rejects that as data after close although the upload succeeded (found in the
  interop tests with XRootD 5.5.3), so XRootD gets no ``Expect`` (it takes such a PUT fine).
  The same HEAD answers ``Overwrite: F`` (as StoRM: an existing destination is a failure).
* Only a 2xx answer after the whole body is success (B25: a replacing PUT, no DELETE first).
* ``RequireChecksumVerification: true``: afterwards the remote's adler32 (HEAD ``Want-Digest``)
  must equal the local one; a mismatching remote copy is deleted (dCache does the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp

from segate.paths import LogicalPath
from segate.storage.posix import PosixStorage
from segate.tpc.client import RemoteClient, RequestSpec, TransferFailed
from segate.tpc.digest import adler32_from_digest
from segate.tpc.parse import TransferRequest
from segate.tpc.streams import Progress, remote_error

EXPECT_CONTINUE_MIN = 1 << 20


def _continue_is_broken(server: str | None) -> bool:
    """XRootD (seen with 5.5.3) sends ``100 Continue`` with ``Connection: Close`` and then the
    final answer on the same connection; aiohttp's parser (llhttp) rejects that as data after
    close, although the upload succeeded. XRootD takes a PUT without ``Expect`` just as well."""
    return server is not None and server.lower().startswith("xrootd/")


async def push(
    client: RemoteClient,
    storage: PosixStorage,
    req: TransferRequest,
    path: LogicalPath,
    progress: Progress,
) -> None:
    """Send the local file at ``path`` to ``req.remote``. Raises TransferFailed."""
    handle = await storage.open_read(path)
    try:
        size = handle.info.size
        expect100 = size >= EXPECT_CONTINUE_MIN
        if not req.overwrite or expect100:
            head = await client.request(RequestSpec("HEAD", req.remote, req.headers), progress.peer)
            head.release()
            progress.touch()
            if not req.overwrite and 200 <= head.status < 300:
                raise TransferFailed("the destination exists and Overwrite is F")
            expect100 = expect100 and not _continue_is_broken(head.headers.get("Server"))

        def body() -> AsyncIterator[bytes | bytearray] | bytes:
            if size == 0:
                return b""

            async def gen() -> AsyncIterator[bytes | bytearray]:
                sent = 0
                async for data in handle.read_range(0, size):
                    yield data
                    sent += len(data)  # aiohttp asks for more once this one is written
                    progress.bytes_done = max(progress.bytes_done, sent)
                    progress.touch()

            return gen()

        spec = RequestSpec(
            "PUT",
            req.remote,
            req.headers,
            {"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            body=body,
            expect100=expect100,
        )
        resp = await client.request(spec, progress.peer)
        try:
            progress.touch()
            if not 200 <= resp.status < 300:
                raise await remote_error(resp, "PUT")
        finally:
            resp.release()
        if progress.bytes_done != size:
            raise TransferFailed(
                f"the destination answered {resp.status} after {progress.bytes_done} "
                f"of {size} bytes"
            )
    finally:
        await handle.close()
    if req.require_checksum:
        await _verify(client, storage, req, path, progress)


async def _verify(
    client: RemoteClient,
    storage: PosixStorage,
    req: TransferRequest,
    path: LogicalPath,
    progress: Progress,
) -> None:
    local = await storage.checksum(path, "adler32")
    spec = RequestSpec("HEAD", req.remote, req.headers, {"Want-Digest": "adler32"})
    resp = await client.request(spec, progress.peer)
    try:
        remote = adler32_from_digest(resp.headers.getall("Digest", []))
        status = resp.status
    finally:
        resp.release()
    if remote == local:
        return
    if remote is not None:  # a wrong copy: remove it (dCache does the same)
        with contextlib.suppress(TransferFailed, aiohttp.ClientError, OSError):
            gone = await client.request(RequestSpec("DELETE", req.remote, req.headers))
            gone.release()
        raise TransferFailed(f"checksum mismatch: local adler32 {local}, destination {remote}")
    raise TransferFailed(
        f"the destination sent no adler32 checksum (HEAD {status}; "
        "RequireChecksumVerification: true)"
    )
