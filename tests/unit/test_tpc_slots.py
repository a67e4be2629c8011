"""``[tpc] max_active`` slots: local to one process, or one counter shared by all workers.

The cross-process part (workers forked by ``segate serve``) is shown with real processes in
tests/interop/test_workers.py; here two TransferSlots on one shared Value stand for two
workers."""

from __future__ import annotations

import multiprocessing

from segate.tpc import slots
from segate.tpc.slots import TransferSlots


def test_local_slots() -> None:
    s = TransferSlots()
    assert not s.shared
    assert [s.try_take(2) for _ in range(3)] == [True, True, False]
    assert s.taken == 2
    s.give_back()
    assert s.try_take(2) and not s.try_take(2)


def test_shared_slots_count_every_worker() -> None:
    ctx = multiprocessing.get_context("fork")
    slots.share(ctx)
    try:
        a, b = TransferSlots(), TransferSlots()  # as two workers would build theirs
        assert a.shared and b.shared
        assert a.try_take(3) and b.try_take(3) and a.try_take(3)
        assert not b.try_take(3) and not a.try_take(3)
        assert a.taken == b.taken == 3
        b.give_back()
        assert a.try_take(3) and not b.try_take(3)
    finally:
        slots.unshare()
    assert not TransferSlots().shared
