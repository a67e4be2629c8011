"""Where ``segate serve`` writes its log: one line per record on stderr, one write per loop turn.

:func:`install` puts a single :class:`TurnBufferedHandler` on the root logger. It formats each
record as ``logging.StreamHandler`` would, but keeps the lines of one event-loop turn and writes
them together at the end of that turn (``loop.call_soon``), so a busy worker makes one
``write(2)`` per turn instead of one per request. Outside a running loop (start-up, executor
threads, shutdown) a record is written at once, after any lines still kept, so the order of the
lines is the order of the records. ``logging.shutdown`` (at exit) flushes what is left.

The access log's lines take a shorter road when nothing else could see them: when the record
would reach only this handler, unfiltered (``direct_sink``), ``AccessLog`` hands the finished
message to :meth:`TurnBufferedHandler.direct`, which prefixes it exactly as the formatter would
(tests/unit/test_hot_path_equivalence.py compares the two). Building a ``LogRecord`` and running
it through ``Logger.callHandlers`` cost more than everything else the access log does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: lines kept before a write even inside a loop turn
_MAX_KEPT = 512
#: the line format of ``[server] log_format = "text"``
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class LineFormatter(logging.Formatter):
    """``logging.Formatter`` whose default ``asctime`` is rendered once per second.

    The text is exactly the default's (``time.strftime(default_time_format, converter(t))``
    and ``default_msec_format`` with the record's msecs); only the strftime is reused while
    the second is the same (one access-log line per request made it a per-request cost).
    """

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or not self.default_msec_format:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created, record.msecs)

    def stamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        msec_format = self.default_msec_format
        return msec_format % (self._stamp, msecs) if msec_format else self._stamp


class TurnBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that writes the lines of one event-loop turn in one write."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._lines: list[str] = []
        self._flush_due = False  # a flush is scheduled on the running loop
        self._direct: Callable[[float, str, str, str], str] | None = None

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        self._direct = _direct_renderer(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line)

    def direct(self, levelname: str, name: str, message: str) -> bool:
        """Log ``message`` as a record of ``name`` at ``levelname`` made now would be logged;
        False (nothing done) when this handler's formatter has no direct form."""
        render = self._direct
        if render is None:
            return False
        line = render(time.time(), levelname, name, message)
        with self.lock:  # type: ignore[union-attr]
            if self._flush_due and len(self._lines) < _MAX_KEPT:
                self._lines.append(line)  # _add's common case, without the call
            else:
                self._add(line)
        return True

    def _add(self, line: str) -> None:
        """Keep ``line`` for the flush due at the end of this loop turn (called with the lock
        held); outside a running loop, write it now."""
        lines = self._lines
        lines.append(line)
        if self._flush_due and len(lines) < _MAX_KEPT:
            return  # a flush is due (a line from another thread goes with it)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if len(lines) >= _MAX_KEPT:
            self.flush()
        elif not self._flush_due:
            self._flush_due = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_due = False
            lines = self._lines
            if lines:
                self._lines = []
                # stderr closed or broken: the lines are lost, as nothing could show them
                with contextlib.suppress(OSError, ValueError):
                    self.stream.write("\n".join(lines) + "\n")
            with contextlib.suppress(OSError, ValueError):
                self.stream.flush()


def _direct_renderer(fmt: logging.Formatter | None) -> Callable[[float, str, str, str], str] | None:
    """A function rendering (created, levelname, name, message) exactly as ``fmt`` formats a
    record without exception or stack, for the two formatters ``install`` sets; else None."""
    if type(fmt) is LineFormatter and fmt._fmt == TEXT_FORMAT and fmt.datefmt is None:
        line_fmt = fmt

        stamp = line_fmt.stamp

        def text(created: float, levelname: str, name: str, message: str) -> str:
            msecs = int((created - int(created)) * 1000) + 0.0  # LogRecord.msecs (3.11)
            return f"{stamp(created, msecs)} {levelname} {name} {message}"

        return text
    if type(fmt) is logging.Formatter and fmt._fmt == "%(message)s":
        return lambda _created, _levelname, _name, message: message
    return None


_installed: TurnBufferedHandler | None = None


def install(json_lines: bool, level: str, stream: TextIO | None = None) -> TurnBufferedHandler:
    """Make a :class:`TurnBufferedHandler` the root logger's only handler."""
    global _installed
    handler = TurnBufferedHandler(stream)
    if json_lines:
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler.setFormatter(LineFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _installed = handler
    return handler


def direct_sink(logger: logging.Logger) -> TurnBufferedHandler | None:
    """The installed handler when a record of ``logger`` would reach it and nothing else:
    no filter and no other handler on the way to the root, and a handler level that lets INFO
    through. (The caller has checked ``logger.isEnabledFor``.)"""
    handler = _installed
    if handler is None or handler.filters or handler.level > logging.INFO:
        return None
    lg: logging.Logger | None = logger
    while lg is not None:
        if lg.filters or lg.disabled:
            return None
        if lg.handlers:
            if lg.parent is not None or lg.handlers != [handler]:
                return None  # (only the root holds the handler)
            return handler
        if not lg.propagate:
            return None
        lg = lg.parent
    return None
