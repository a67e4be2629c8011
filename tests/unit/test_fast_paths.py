"""The performance fast paths keep the old semantics (issue #7).

* ``_resolve`` (O_PATH + /proc/self/fd) answers exactly what ``os.path.realpath`` answers, for
  plain paths, symlinks inside and outside the root, and dangling links (fallback).
* ``send_range`` (page-cached reads on the loop) sends the same bytes as ``read_range``.
* ``write_parts`` (one writev per chunk) stores the same bytes and adler32 as ``write``, and an
  aborted upload refuses further writes instead of touching a closed descriptor.
* The benchmark's ratio is "how many times as good segate is" in both directions.
* ``open_no_symlinks`` (openat2) opens only paths with no symlink on the way, and the storage
  takes it for plain paths below the root (the general check decides every other one; the
  equivalence against that check is in test_hot_path_equivalence.py).
"""

from __future__ import annotations

import os
import shutil
import stat
import zlib
from pathlib import Path
from typing import Any, cast

import pytest

from segate.paths import LogicalPath
from segate.storage import nolinks, posix
from segate.storage.base import BackendError, EscapeError, NotRegularError, UnavailableError
from segate.storage.posix import PosixStorage, _resolve
from testbed.bench.report import Results


def test_resolve_matches_realpath(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    os.symlink(tmp_path / "d", tmp_path / "link")
    os.symlink("/etc", tmp_path / "out")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for p in ("d", "d/f", "link", "link/f", "out", "dangling"):
        full = str(tmp_path / p)
        assert _resolve(full) == os.path.realpath(full), p


def test_confinement_still_refuses_escaping_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/etc", root / "out")
    st = PosixStorage(root)
    with pytest.raises(EscapeError):
        st._confined(LogicalPath(("out", "passwd")))
    with pytest.raises(EscapeError):
        st._confined(LogicalPath(("out", "no", "such")))


async def test_send_range_equals_read_range(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 123)
    (tmp_path / "f").write_bytes(data)
    st = PosixStorage(tmp_path, chunk=1 << 20, read_chunk=256 << 10)
    h = await st.open_read(LogicalPath(("f",)))
    pieces: list[bytes] = []

    async def copy(piece: bytes | memoryview) -> None:
        pieces.append(bytes(piece))

    try:
        await h.send_range(5, len(data) - 10, copy)
        read = b"".join([c async for c in h.read_range(5, len(data) - 10)])
        assert b"".join(pieces) == read == data[5:-5]
        pieces.clear()
        await h.send_range(0, len(data), copy)
        assert max(len(p) for p in pieces) == 256 << 10
    finally:
        await h.close()


async def test_send_range_reuses_its_buffer_only_when_nothing_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that keeps the pieces (as a transport's backlog does when the socket is full)
    gets a fresh buffer each time, so what it holds is never overwritten; a writer that
    copies and lets go gets the same buffer again (the point: no zeroing, no page faults).
    Buffers are counted by shadowing ``bytearray`` in the storage module."""
    made: list[int] = []

    class Counted(bytearray):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(len(self))

    monkeypatch.setattr(posix, "bytearray", Counted, raising=False)
    data = os.urandom(8 * (64 << 10))
    (tmp_path / "f").write_bytes(data)
    st = PosixStorage(tmp_path, read_chunk=64 << 10)
    h = await st.open_read(LogicalPath(("f",)))
    kept: list[bytes | memoryview] = []
    copied: list[bytes] = []

    async def keep(piece: bytes | memoryview) -> None:
        kept.append(piece)

    async def copy(piece: bytes | memoryview) -> None:
        copied.append(bytes(piece))

    try:
        await h.send_range(0, len(data), keep)
        assert b"".join(bytes(p) for p in kept) == data  # none overwritten by a later read
        assert made.count(64 << 10) == 8
        made.clear()
        await h.send_range(0, len(data), copy)
        assert b"".join(copied) == data
        assert made.count(64 << 10) == 1
    finally:
        await h.close()


async def test_write_parts_same_bytes_and_checksum(tmp_path: Path) -> None:
    st = PosixStorage(tmp_path)
    st.prepare()
    parts = [os.urandom(n) for n in (1, 0, 16384, 70000, 3)] * 300  # > IOV_MAX pieces
    up = await st.new_upload(LogicalPath(("f",)))
    await up.write_parts(parts[:700])
    await up.write_parts(parts[700:])
    assert await up.commit(overwrite=True, make_parents=False)
    body = b"".join(parts)
    assert (tmp_path / "f").read_bytes() == body
    assert await st.checksum(LogicalPath(("f",)), "adler32") == f"{zlib.adler32(body):08x}"


async def test_write_parts_slices_large_and_odd_pieces(tmp_path: Path) -> None:
    """Pieces larger than a write slice (256 KiB), bytearrays and empty pieces: the same
    bytes and adler32 as one write of the joined data."""
    st = PosixStorage(tmp_path)
    st.prepare()
    sizes = (600_000, 0, 262_144, 262_145, 1, 5_000_000, 131_072)
    parts: list[bytes | bytearray] = [os.urandom(n) for n in sizes]
    parts[2] = bytearray(parts[2])
    up = await st.new_upload(LogicalPath(("f",)))
    await up.write_parts(cast(list[bytes], parts))  # (a PUT may hand bytearrays)
    assert up.adler32 == f"{zlib.adler32(b''.join(parts)):08x}"
    assert await up.commit(overwrite=True, make_parents=False)
    assert (tmp_path / "f").read_bytes() == b"".join(parts)


async def test_write_parts_at_out_of_order_with_running_adler(tmp_path: Path) -> None:
    """Multi-stream pull: blocks written at offsets in any order land in place; each block's
    adler32 chains from the value given."""
    st = PosixStorage(tmp_path)
    st.prepare()
    body = os.urandom(3_000_000)
    blocks = [(0, 1_000_000), (1_000_000, 2_100_000), (2_100_000, 3_000_000)]
    up = await st.new_upload(LogicalPath(("f",)))
    for start, end in reversed(blocks):
        piece = body[start:end]
        parts = [piece[:7], piece[7:400_000], piece[400_000:]]
        got = await up.write_parts_at(start, parts, zlib.adler32(b"seed"))
        assert got == zlib.adler32(piece, zlib.adler32(b"seed"))
        assert await up.write_parts_at(start, parts) is None  # no value given: none returned
    assert up.adler32 is None  # positional writes turn the sequential checksum off
    assert await up.commit(overwrite=True, make_parents=False)
    assert (tmp_path / "f").read_bytes() == body


async def test_aborted_upload_refuses_writes(tmp_path: Path) -> None:
    st = PosixStorage(tmp_path)
    st.prepare()
    up = await st.new_upload(LogicalPath(("f",)))
    await up.abort()
    with pytest.raises(BackendError):
        await up.write_parts([b"late"])
    assert not (tmp_path / "f").exists()


def test_bench_ratio_direction() -> None:
    r = Results()
    up = r.metric("get", "GET", "MB/s")
    down = r.metric("p99", "p99", "ms", higher_better=False)
    for v in (100.0, 300.0, 200.0):
        up.add("segate", v)
        down.add("segate", v)
    up.add("xrootd", 100.0)
    down.add("xrootd", 100.0)
    assert up.ratio() == 2.0 and down.ratio() == 0.5
    assert "2.00" in r.summary() and "0.50" in r.summary()


# -- openat2 without symlinks (segate/storage/nolinks.py) ------------------------------------
needs_openat2 = pytest.mark.skipif(not nolinks.available(), reason="no openat2 on this kernel")


@needs_openat2
def test_open_no_symlinks_refuses_every_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"outside")
    os.symlink("d/f", root / "inlink")
    os.symlink("../secret", root / "outlink")
    os.symlink("d", root / "dirlink")
    fd = nolinks.open_no_symlinks(str(root / "d" / "f"), os.O_RDONLY)
    assert fd >= 0
    try:
        assert os.read(fd, 10) == b"inside"
    finally:
        os.close(fd)
    # every symlink, inside or not, last component or not: -1, for the general check to decide
    for rel in ("inlink", "outlink", "dirlink/f", "nope", "d/f\x00x", "d\x00"):
        assert nolinks.open_no_symlinks(f"{root}/{rel}", os.O_RDONLY) == -1, rel
    assert nolinks.open_no_symlinks(f"/proc/self/fd/{0}", os.O_PATH) == -1  # a magic link


@needs_openat2
def test_storage_uses_openat2_for_plain_paths(tmp_path: Path, monkeypatch: Any) -> None:
    """A path without symlinks is stat'ed and opened with no readlink at all; a symlinked one
    still goes through the general check (which readlink serves)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"data")
    os.symlink("d", tmp_path / "link")
    st = PosixStorage(tmp_path)
    st.prepare()
    calls: list[str] = []
    real_readlink = os.readlink

    def counting(path: Any, *a: Any, **kw: Any) -> Any:
        calls.append(str(path))
        return real_readlink(path, *a, **kw)

    monkeypatch.setattr(os, "readlink", counting)
    assert st._stat_sync(LogicalPath(("d", "f"))) is not None
    fd, info = st._open_sync(LogicalPath(("d", "f")))
    os.close(fd)
    assert info.size == 4 and calls == []
    assert st._stat_sync(LogicalPath(("link", "f"))) is not None
    assert calls  # the symlinked path took the general route
    with pytest.raises(EscapeError):
        st._stat_sync(LogicalPath((".segate", "tmp")))


def test_root_renamed_after_first_use_is_seen_at_once(tmp_path: Path) -> None:
    """Nothing of the root is held between requests: a root renamed away and recreated (or
    mounted over, or gone) is what the very next request sees."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"OLD")
    (root / "only_old").write_bytes(b"x")
    st = PosixStorage(root)
    st.prepare()
    assert st._stat_sync(LogicalPath(("f",))) is not None
    root.rename(tmp_path / "retired")
    root.mkdir()
    (root / "f").write_bytes(b"NEW!")
    fd, info = st._open_sync(LogicalPath(("f",)))
    try:
        assert os.read(fd, 10) == b"NEW!" and info.size == 4
    finally:
        os.close(fd)
    assert st._stat_sync(LogicalPath(("only_old",))) is None
    with pytest.raises(FileNotFoundError):
        st._open_sync(LogicalPath(("only_old",)))
    shutil.rmtree(root)
    with pytest.raises(UnavailableError):
        st._stat_sync(LogicalPath(()))


def test_odd_segments_never_take_the_fast_path(tmp_path: Path) -> None:
    """LogicalPath never holds ".", ".." or "/" in a segment (paths.py); if one did, openat2
    (which allows a ".." that stays inside) must not be what lets it into the reserved area."""
    (tmp_path / "d").mkdir()
    st = PosixStorage(tmp_path)
    st.prepare()
    (tmp_path / ".segate" / "tmp" / "staged").write_bytes(b"s")
    for segs in (
        (".", ".segate", "tmp", "staged"),
        ("d", "..", ".segate", "tmp", "staged"),
        ("d/../.segate/tmp/staged",),
        (".segate", "tmp", "staged"),
    ):
        assert st._open_plain(st._real(LogicalPath(segs)), os.O_PATH) == -1, segs
        with pytest.raises(EscapeError):
            st._stat_sync(LogicalPath(segs))
        with pytest.raises(EscapeError):
            st._open_sync(LogicalPath(segs))


def test_link_swapped_after_the_check_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    """The general route opens after checking; a symlink swapped in between (a local user
    racing the gateway) gives EscapeError, never the outside file."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"inside")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_bytes(b"SECRET")
    os.symlink("d", root / "x")
    st = PosixStorage(root)
    st.prepare()
    real_check = st._check_confined

    def check_then_swap(real: str) -> None:
        real_check(real)
        os.unlink(root / "x")
        os.symlink(tmp_path / "out", root / "x")

    monkeypatch.setattr(st, "_check_confined", check_then_swap)
    monkeypatch.setattr(st, "_confined_fd", lambda real: -1)  # as if the link was dangling
    with pytest.raises(EscapeError):
        st._open_sync(LogicalPath(("x", "f")))
    os.unlink(root / "x")
    os.symlink("d", root / "x")
    with pytest.raises(EscapeError):
        st._stat_sync(LogicalPath(("x", "f")))


def test_special_files_are_never_opened_for_reading(tmp_path: Path, monkeypatch: Any) -> None:
    """GET's open takes an O_PATH descriptor, checks it, and opens only a regular file for
    reading (through that descriptor): a FIFO or a device node is refused (403) without
    ever being opened, which for a device could have side effects."""
    (tmp_path / "f").write_bytes(b"data")
    os.mkfifo(tmp_path / "fifo")
    specials = ["fifo"]
    try:
        os.mknod(tmp_path / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # as /dev/null
        specials.append("null")
    except (PermissionError, OSError):
        pass  # not root, or nodev: the FIFO alone then
    os.symlink("fifo", tmp_path / "fifolink")  # the general route too
    specials.append("fifolink")
    st = PosixStorage(tmp_path)
    st.prepare()
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def recording(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        opened.append((str(path), flags))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", recording)
    for name in specials:
        with pytest.raises(NotRegularError):
            st._open_sync(LogicalPath((name,)))
        assert [p for p, fl in opened if not fl & os.O_PATH] == [], name
    fd, info = st._open_sync(LogicalPath(("f",)))
    try:
        assert os.read(fd, 10) == b"data" and info.size == 4
    finally:
        os.close(fd)
    reads = [p for p, fl in opened if not fl & os.O_PATH]
    assert len(reads) == 1 and reads[0].startswith("/proc/self/fd/")
