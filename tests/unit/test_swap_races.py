"""A folder swapped for a symlink after the confinement check is not followed (field report:
a tester swapped ``rdir`` with a link to an outside folder in a tight loop and got DELETE and
PUT to act outside the root, and a Depth-1 PROPFIND to list it).

The race is made deterministic here: the swap happens right after the storage has taken its
checked descriptor of the folder (``_dir_fd``), i.e. the local user wins every time. Every
change and every listing must then act on the folder that was checked (it moved, inside the
root) or fail; the outside folder must stay exactly as it was. (Against a real server with
the swap in a loop, ``renameat2(RENAME_EXCHANGE)``, 30 000 DELETEs and 200 PUTs: the previous
code deleted 99 files and created 116 outside the root, this code none; see the commit.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from segate.paths import LogicalPath
from segate.storage.base import EscapeError, NotRegularError, StorageError
from segate.storage.posix import PosixStorage


def P(*segs: str) -> LogicalPath:
    return LogicalPath(segs)


class Swap:
    """``root/rdir`` (a real folder) and ``out`` (outside, with the same file names)."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.out = tmp / "out"
        self.moved = self.root / "moved"  # where the checked folder goes (still inside)
        self.root.mkdir()
        self.out.mkdir()
        (self.root / "rdir").mkdir()
        (self.root / "f").write_bytes(b"inside-f")
        for name in ("v", "w"):
            (self.root / "rdir" / name).write_bytes(b"inside")
            (self.out / name).write_bytes(b"SECRET")
        (self.out / "OUTONLY").write_bytes(b"SECRET")
        (self.out / "odir").mkdir()
        self.before = self.snapshot()
        self.done = False

    def snapshot(self) -> dict[str, tuple[int, bytes, list[str]]]:
        out: dict[str, tuple[int, bytes, list[str]]] = {}
        for dirpath, dirs, files in os.walk(self.out):
            for n in dirs + files:
                p = os.path.join(dirpath, n)
                data = Path(p).read_bytes() if os.path.isfile(p) else b""
                out[p] = (os.lstat(p).st_mode, data, sorted(os.listxattr(p)))
        return out

    def swap(self) -> None:
        if not self.done:
            self.done = True
            os.rename(self.root / "rdir", self.moved)
            os.symlink(self.out, self.root / "rdir")

    def outside_untouched(self) -> None:
        assert self.done, "the swap never happened: the test checked nothing"
        assert self.snapshot() == self.before


@pytest.fixture
def race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Swap, PosixStorage]:
    """The storage, with the swap made right after it took a checked descriptor of rdir."""
    sw = Swap(tmp_path)
    storage = PosixStorage(sw.root)
    storage.prepare()
    original: Callable[..., int] = PosixStorage._dir_fd
    target = str(sw.root / "rdir")

    def dir_fd_then_swap(self: PosixStorage, real: str) -> int:
        fd = original(self, real)
        if real == target:
            sw.swap()
        return fd

    monkeypatch.setattr(PosixStorage, "_dir_fd", dir_fd_then_swap)
    return sw, storage


async def _quiet(coro: Any) -> Any:
    """Run a storage call; a refusal (StorageError) is a fine outcome of a race."""
    try:
        return await coro
    except StorageError:
        return None


async def test_delete_acts_on_the_checked_folder(race: tuple[Swap, PosixStorage]) -> None:
    sw, storage = race
    await _quiet(storage.delete(P("rdir", "v")))
    sw.outside_untouched()
    assert not (sw.moved / "v").exists()  # the file that was checked is the one deleted


async def test_recursive_delete_acts_on_the_checked_folder(
    race: tuple[Swap, PosixStorage],
) -> None:
    sw, storage = race
    (sw.moved.parent / "rdir" / "sub").mkdir()
    (sw.moved.parent / "rdir" / "sub" / "x").write_bytes(b"x")
    await _quiet(storage.delete(P("rdir", "sub"), recursive=True))
    sw.outside_untouched()


async def test_upload_commit_lands_in_the_checked_folder(
    race: tuple[Swap, PosixStorage],
) -> None:
    sw, storage = race
    for name, overwrite in (("new", False), ("w", True)):
        sw.done = False
        if (sw.root / "rdir").is_symlink():  # undo the previous swap
            os.unlink(sw.root / "rdir")
            os.rename(sw.moved, sw.root / "rdir")
        up = await storage.new_upload(P("rdir", name))
        await up.write(b"planted")
        await _quiet(up.commit(overwrite=overwrite, make_parents=False))
        sw.outside_untouched()
        assert (sw.moved / name).read_bytes() == b"planted"
    assert os.listdir(storage.staging) == []  # nothing left behind


async def test_mkdir_and_makedirs_stay_inside(race: tuple[Swap, PosixStorage]) -> None:
    sw, storage = race
    await _quiet(storage.mkdir(P("rdir", "newdir")))
    sw.outside_untouched()
    assert (sw.moved / "newdir").is_dir()


async def test_makedirs_does_not_follow_a_swapped_folder(
    race: tuple[Swap, PosixStorage],
) -> None:
    sw, storage = race
    await _quiet(storage.makedirs(P("rdir", "a", "b")))
    sw.outside_untouched()


async def test_move_into_and_out_of_the_swapped_folder(
    race: tuple[Swap, PosixStorage],
) -> None:
    sw, storage = race
    await _quiet(storage.move(P("rdir", "v"), P("moved-out"), overwrite=True))
    sw.outside_untouched()
    # whatever moved out is the checked (inside) file, never the outside one
    moved_out = sw.root / "moved-out"
    assert not moved_out.exists() or moved_out.read_bytes() == b"inside"


async def test_move_onto_the_swapped_folder(race: tuple[Swap, PosixStorage]) -> None:
    sw, storage = race
    await _quiet(storage.move(P("f"), P("rdir", "w"), overwrite=True))
    sw.outside_untouched()


async def test_copy_reads_and_writes_the_checked_folders(
    race: tuple[Swap, PosixStorage],
) -> None:
    sw, storage = race
    await _quiet(storage.copy(P("f"), P("rdir", "c"), overwrite=True))
    sw.outside_untouched()


async def test_listing_shows_the_checked_folder(race: tuple[Swap, PosixStorage]) -> None:
    sw, storage = race
    entries = await _quiet(storage.listdir(P("rdir")))
    sw.outside_untouched()
    names = {i.path.name for i in entries or []}
    assert "OUTONLY" not in names
    assert names <= {"v", "w"}


def _swap_file_after_check(sw: Swap, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Once the storage has its checked descriptor of ``rdir/v``, that file moves aside (to
    ``v-moved``, still inside) and a link to the outside ``v`` takes its name."""
    original: Callable[..., int] = PosixStorage._checked_fd
    target = sw.root / "rdir" / "v"

    def checked_then_swap(self: PosixStorage, real: str) -> int:
        fd = original(self, real)
        if real == str(target) and not sw.done:
            sw.done = True
            os.rename(target, sw.root / "v-moved")
            os.symlink(sw.out / "v", target)
        return fd

    monkeypatch.setattr(PosixStorage, "_checked_fd", checked_then_swap)
    return target


async def test_proppatch_writes_to_the_checked_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROPPATCH checks the object itself: a file swapped for a link after that check."""
    sw = Swap(tmp_path)
    storage = PosixStorage(sw.root)
    storage.prepare()
    _swap_file_after_check(sw, monkeypatch)
    await _quiet(storage.patch_properties(P("rdir", "v"), [("{urn:x}p", "<p xmlns='urn:x'/>")]))
    sw.outside_untouched()


async def test_copy_of_a_tree_copies_links_as_links_and_refuses_fifos(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "t" / "sub").mkdir(parents=True)
    (root / "t" / "sub" / "f").write_bytes(b"data")
    os.chmod(root / "t" / "sub" / "f", 0o640)
    os.utime(root / "t" / "sub" / "f", ns=(1_000_000_000, 2_000_000_000))
    os.symlink("/etc/passwd", root / "t" / "out")  # copied as a link, never read
    os.symlink("sub/f", root / "t" / "rel")
    storage = PosixStorage(root)
    storage.prepare()
    await storage.patch_properties(P("t", "sub", "f"), [("{urn:x}p", "<p xmlns='urn:x'/>")])
    assert await storage.copy(P("t"), P("c"), overwrite=False) is True
    assert (root / "c" / "sub" / "f").read_bytes() == b"data"
    st = os.stat(root / "c" / "sub" / "f")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == 2_000_000_000
    assert os.readlink(root / "c" / "out") == "/etc/passwd"
    assert os.readlink(root / "c" / "rel") == "sub/f"
    props = await storage.read_properties([P("c", "sub", "f")])
    assert props[0] == {"{urn:x}p": "<p xmlns='urn:x'/>"}
    os.mkfifo(root / "t" / "fifo")
    with pytest.raises(NotRegularError):  # opened O_NONBLOCK, refused: never waits
        await storage.copy(P("t"), P("c2"), overwrite=False)
    assert not (root / "c2").exists()
    assert os.listdir(storage.staging) == []


def test_a_file_named_like_a_deleted_root_is_not_the_root(tmp_path: Path) -> None:
    """/proc shows a removed object's path with " (deleted)": a real file of that name beside
    the root must not pass as the root (field report), and a removed object is gone."""
    root = tmp_path / "data"
    root.mkdir()
    storage = PosixStorage(root)
    beside = tmp_path / "data (deleted)"
    beside.write_bytes(b"SECRET")
    fd = os.open(beside, os.O_PATH)
    try:
        with pytest.raises(EscapeError):
            storage._verify_fd(fd)
    finally:
        os.close(fd)
    (root / "gone").write_bytes(b"x")
    fd = os.open(root / "gone", os.O_PATH)
    try:
        os.unlink(root / "gone")
        with pytest.raises(FileNotFoundError):
            storage._verify_fd(fd)
    finally:
        os.close(fd)


async def test_dead_properties_are_read_from_the_checked_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Depth-0 or Depth-1 PROPFIND read segate's property attribute by path after the check:
    a file swapped for a link to an outside file showed the outside file's properties."""
    sw = Swap(tmp_path)
    os.setxattr(sw.out / "v", "user.segate.props", b'{"{urn:x}leak":"OUTSIDE"}')
    sw.before = sw.snapshot()
    storage = PosixStorage(sw.root)
    storage.prepare()
    target = _swap_file_after_check(sw, monkeypatch)
    info, props = await storage.stat_with_properties(P("rdir", "v"))
    assert info is not None and props == {}
    sw.done = False
    os.unlink(target)
    os.rename(sw.root / "v-moved", target)
    assert await storage.read_properties([P("rdir", "v")]) == [{}]
    sw.outside_untouched()


async def test_move_and_copy_never_replace_a_destination_that_appeared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authorised as a creation (storage.create only), a MOVE or COPY must not replace a
    destination another client created meanwhile: storage refuses atomically (EEXIST)."""
    from segate.storage.base import ExistsError

    root = tmp_path / "root"
    root.mkdir()
    storage = PosixStorage(root)
    storage.prepare()
    original = PosixStorage._parent_fd

    def parent_then_create(self: PosixStorage, path: LogicalPath) -> tuple[int, str]:
        got = original(self, path)
        if path.name == "dst" and not (root / "dst").exists():
            (root / "dst").write_bytes(b"someone else's")  # the other client wins
        return got

    monkeypatch.setattr(PosixStorage, "_parent_fd", parent_then_create)
    for op in ("move", "copy"):
        (root / "src").write_bytes(b"mine")
        with pytest.raises(ExistsError):
            await getattr(storage, op)(P("src"), P("dst"), overwrite=False)
        assert (root / "dst").read_bytes() == b"someone else's"
        os.unlink(root / "dst")
    assert os.listdir(storage.staging) == []
