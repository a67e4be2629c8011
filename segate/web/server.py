"""Run the app: one process, or ``workers`` processes sharing one port (SO_REUSEPORT).

uvloop is used when installed (the default loop sends ~130 MB/s over TLS here, uvloop
~1.1 GB/s; README performance notes). SIGTERM/SIGINT stop accepting, let running requests
finish for ``[server] drain_timeout`` seconds, then stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from segate.config import Settings
from segate.tpc import slots
from segate.web.app import (
    CONN_LIMIT,
    StorageSetupError,
    clean_staging,
    create_app,
    install_connection_limit,
    storage_for,
)
from segate.web.lane import FastLane
from segate.web.tls import server_ssl_context

log = logging.getLogger("segate")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return,unused-ignore]
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None


class ListenError(Exception):
    """The listening socket cannot be opened (port taken, no permission): one clear line for
    the operator, not a traceback (``segate serve`` exits with status 2)."""


#: seconds the requests still running at the drain deadline get to clean up once cancelled
CANCEL_GRACE = 1.0


async def drain(listener: asyncio.AbstractServer, app: web.Application, timeout: float) -> None:
    """Stop accepting connections, then wait up to ``timeout`` for running requests to finish.

    aiohttp's own shutdown marks every connection closing first, after which it reads no more
    request bytes, so an upload in flight could never complete within the drain (issue #8):
    the listening socket is closed here and the open connections keep being served.
    """
    listener.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while app[CONN_LIMIT].active > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if app[CONN_LIMIT].active:
        log.warning("drain deadline: aborting %d running requests", app[CONN_LIMIT].active)


async def serve_forever(
    settings: Settings, *, reuse_port: bool = False, clean: bool = True
) -> None:
    srv = settings.server
    assert srv.cert is not None and srv.key is not None
    ssl_ctx = server_ssl_context(srv.cert, srv.key, srv.ca_dir)
    app = create_app(settings, clean=clean)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        max_field_size=srv.max_header_size,
        max_line_size=srv.max_header_size,
        shutdown_timeout=CANCEL_GRACE,  # after our own drain (below): cancel what is left
    )
    await runner.setup()
    assert runner.server is not None
    install_connection_limit(app, runner.server)
    lane = FastLane(app, runner.server)  # every connection starts in the fast lane
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(
            lane, srv.host, srv.port, ssl=ssl_ctx, reuse_port=reuse_port, backlog=1024
        )
    except OSError as exc:
        await runner.cleanup()
        # asyncio's message repeats the address; the errno's own text is the clear part
        reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
        raise ListenError(f"cannot listen on {srv.listen}: {reason}") from exc
    lane.start()
    # what start-up built lives as long as the worker: the cyclic collector need not walk it
    # again at every full collection (the per-request garbage is what it is for)
    gc.freeze()
    log.info("listening on %s (pid %d)", srv.listen, os.getpid())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining requests for up to %.0f s", srv.drain_timeout)
    await drain(listener, app, srv.drain_timeout)
    await lane.shutdown(CANCEL_GRACE)
    await runner.cleanup()


def _run_loop(settings: Settings, *, reuse_port: bool, clean: bool = True) -> None:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve_forever(settings, reuse_port=reuse_port, clean=clean))


def _worker(settings: Settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    try:
        _run_loop(settings, reuse_port=True, clean=False)  # the parent cleaned the staging
    except (ListenError, StorageSetupError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def run(settings: Settings) -> int:
    n = settings.server.workers
    if n == 1:
        _run_loop(settings, reuse_port=False)
        return 0
    # once, before any worker can have an upload in progress in the staging folder
    clean_staging(storage_for(settings), f" (before starting {n} workers)")
    ctx = multiprocessing.get_context("fork")
    slots.share(ctx)  # [tpc] max_active counts the transfers of all workers together
    procs = [ctx.Process(target=_worker, args=(settings,), daemon=False) for _ in range(n)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for p in procs:
        p.join()
        code = code or (p.exitcode or 0)
    return code
