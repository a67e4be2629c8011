"""segate serve's log handler: lines kept for one loop turn, written in order, and the access
log's direct road giving exactly the formatter's line."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segate import logsink
from segate.logsink import TEXT_FORMAT, LineFormatter, TurnBufferedHandler, direct_sink

Installed = tuple[TurnBufferedHandler, io.StringIO]


@pytest.fixture
def installed() -> Iterator[Installed]:
    """logsink.install on a StringIO, with the root logger and the module state restored."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logsink._installed)
    stream = io.StringIO()
    handler = logsink.install(False, "info", stream)
    try:
        yield handler, stream
    finally:
        root.handlers[:], root.level, logsink._installed = saved[0], saved[1], saved[2]


def _record(created: float, msg: str) -> logging.LogRecord:
    rec = logging.LogRecord("segate.access", logging.INFO, __file__, 1, msg, None, None)
    rec.created = created
    rec.msecs = int((created - int(created)) * 1000) + 0.0
    return rec


@settings(max_examples=300, deadline=None)
@given(
    created=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    msg=st.text(max_size=40),
    level=st.sampled_from(["INFO", "WARNING"]),
)
def test_direct_line_is_the_formatted_record(created: float, msg: str, level: str) -> None:
    text = TurnBufferedHandler(io.StringIO())
    text.setFormatter(LineFormatter(TEXT_FORMAT))
    render = text._direct
    assert render is not None
    rec = _record(created, msg)
    rec.levelname = level
    assert render(created, level, "segate.access", msg) == LineFormatter(TEXT_FORMAT).format(rec)
    json_lines = TurnBufferedHandler(io.StringIO())
    json_lines.setFormatter(logging.Formatter("%(message)s"))
    assert json_lines._direct is not None
    assert json_lines._direct(created, level, "segate.access", msg) == msg


def test_other_formatters_have_no_direct_road() -> None:
    h = TurnBufferedHandler(io.StringIO())
    for fmt in (None, logging.Formatter("%(name)s %(message)s"), LineFormatter("%(message)s")):
        h.setFormatter(fmt)
        assert h._direct is None
        assert h.direct("INFO", "segate.access", "x") is False


def test_outside_a_loop_each_record_is_written_at_once(installed: Installed) -> None:
    _handler, stream = installed
    log = logging.getLogger("segate.test")
    log.info("one")
    assert stream.getvalue().endswith(" INFO segate.test one\n")
    log.warning("two")
    assert stream.getvalue().splitlines()[-1].endswith(" WARNING segate.test two")


def test_inside_a_loop_a_turn_is_one_write_in_record_order(installed: Installed) -> None:
    handler, stream = installed
    log = logging.getLogger("segate.test")
    writes: list[str] = []
    real_write = stream.write

    def counted(text: str) -> int:
        writes.append(text)
        return real_write(text)

    stream.write = counted  # type: ignore[method-assign]

    async def turn() -> str:
        log.info("a")
        assert handler.direct("INFO", "segate.access", "b")
        log.warning("c")
        seen_in_turn = stream.getvalue()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return seen_in_turn

    assert asyncio.run(turn()) == ""
    lines = stream.getvalue().splitlines()
    assert [ln.split(" ", 3)[2:] for ln in lines] == [
        ["INFO", "segate.test a"],
        ["INFO", "segate.access b"],
        ["WARNING", "segate.test c"],
    ]
    assert len(writes) == 1


def test_a_busy_turn_writes_before_the_turn_ends(installed: Installed) -> None:
    handler, stream = installed

    async def turn() -> int:
        for i in range(logsink._MAX_KEPT + 10):
            handler.direct("INFO", "segate.access", f"line {i}")
        return len(stream.getvalue().splitlines())

    assert asyncio.run(turn()) >= logsink._MAX_KEPT
    assert len(stream.getvalue().splitlines()) == logsink._MAX_KEPT + 10


def test_a_thread_logging_during_a_turn_loses_nothing(installed: Installed) -> None:
    _handler, stream = installed
    log = logging.getLogger("segate.test")

    async def turn() -> None:
        log.info("from the loop")
        t = threading.Thread(target=log.info, args=("from a thread",))
        t.start()
        t.join()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(turn())
    text = stream.getvalue()
    assert "segate.test from the loop" in text and "segate.test from a thread" in text


def test_shutdown_flushes_what_is_kept(installed: Installed) -> None:
    handler, stream = installed

    async def turn() -> None:
        handler.direct("INFO", "segate.access", "kept")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(turn())  # the flush is scheduled, the loop is not run again
    loop.close()
    handler.flush()  # what logging.shutdown does at exit
    assert stream.getvalue().endswith(" INFO segate.access kept\n")


def test_direct_sink_only_when_nothing_else_would_see_the_record(installed: Installed) -> None:
    handler, _stream = installed
    access = logging.getLogger("segate.access")
    assert direct_sink(access) is None  # pytest's own capture handlers sit on the root
    root = logging.getLogger()
    pytest_handlers = root.handlers[:]
    root.handlers[:] = [handler]  # as in segate serve
    try:
        _check_direct_sink(handler, access)
    finally:
        root.handlers[:] = pytest_handlers


def _check_direct_sink(handler: TurnBufferedHandler, access: logging.Logger) -> None:
    assert direct_sink(access) is handler

    f = logging.Filter("nothing")
    access.addFilter(f)
    assert direct_sink(access) is None
    access.removeFilter(f)

    other = logging.Handler()
    logging.getLogger("segate").addHandler(other)
    assert direct_sink(access) is None
    logging.getLogger("segate").removeHandler(other)

    logging.getLogger().addHandler(other)  # e.g. pytest's caplog
    assert direct_sink(access) is None
    logging.getLogger().removeHandler(other)

    access.propagate = False
    assert direct_sink(access) is None
    access.propagate = True

    handler.setLevel(logging.WARNING)
    assert direct_sink(access) is None
    handler.setLevel(logging.NOTSET)
    assert direct_sink(access) is handler


def test_without_install_there_is_no_direct_sink(installed: Installed) -> None:
    logsink._installed = None
    assert direct_sink(logging.getLogger("segate.access")) is None
