"""How many third-party copies run at once, counted over all worker processes of a server.

``[tpc] max_active`` bounds the transfers of the whole server. With ``[server] workers`` > 1
each worker is its own process, so the count lives in shared memory that ``server.run`` makes
before forking the workers (:func:`share`): a ``multiprocessing.Value`` whose lock (a POSIX
semaphore) is held for one compare-and-add. With one process the count is a plain int.

A worker that dies in the middle of transfers leaves their slots taken until the server is
restarted (the parent does not restart a dead worker either, so the server is degraded anyway
and its log says why).
"""

from __future__ import annotations

from typing import Any

#: the shared counter the workers of this server inherit (set in the parent before forking)
_shared: Any = None


def share(ctx: Any) -> None:
    """Make the counter the workers forked from now on will share (``ctx``: a fork context)."""
    global _shared
    _shared = ctx.Value("i", 0)


def unshare() -> None:
    global _shared
    _shared = None


class TransferSlots:
    """Slots for running transfers: the server-wide counter if one was shared, else local."""

    def __init__(self) -> None:
        self._shared = _shared
        self._local = 0

    @property
    def shared(self) -> bool:
        return self._shared is not None

    @property
    def taken(self) -> int:
        """Transfers running now (in every worker when shared)."""
        return int(self._shared.value) if self._shared is not None else self._local

    def try_take(self, limit: int) -> bool:
        """Take a slot if fewer than ``limit`` are taken; False (nothing taken) otherwise."""
        shared = self._shared
        if shared is None:
            if self._local >= limit:
                return False
            self._local += 1
            return True
        with shared.get_lock():
            if shared.value >= limit:
                return False
            shared.value += 1
        return True

    def give_back(self) -> None:
        shared = self._shared
        if shared is None:
            self._local -= 1
            return
        with shared.get_lock():
            shared.value -= 1
