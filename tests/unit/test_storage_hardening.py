"""Second tester's report on the descriptor-based storage (issue #7 session 5): deep trees,
the staging folder at start-up, setuid bits and foreign xattrs on COPY, special files inside
a copied tree, link loops. Each test fails on the code before the fix."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from segate.paths import LogicalPath
from segate.storage.base import EscapeError, InvalidTargetError, NotRegularError
from segate.storage.fdtree import MAX_COPY_DEPTH
from segate.storage.posix import PosixStorage


def P(*segs: str) -> LogicalPath:
    return LogicalPath(segs)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _deep(base: Path, levels: int) -> Path:
    """``levels`` nested folders below ``base`` (deeper than Python's recursion limit)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("a", dir_fd=fd)
            nfd = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)
    return base


async def test_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    """PUT with create_parents can build it in one request; COPY used to die of
    RecursionError leaving ~1000 folders and a descriptor behind, DELETE answered 500, and the
    start-up clean-up of such a staging leftover stopped the server from starting."""
    root = tmp_path / "root"
    root.mkdir()
    storage = PosixStorage(root)
    storage.prepare()
    (root / "deep").mkdir()
    _deep(root / "deep", 1200)
    before = _fds()
    with pytest.raises(InvalidTargetError):  # 409: refused cleanly
        await storage.copy(P("deep"), P("copy"), overwrite=False)
    assert _fds() == before
    assert os.listdir(storage.staging) == [] and not (root / "copy").exists()
    await storage.delete(P("deep"), recursive=True)  # removed, not a 500
    assert not (root / "deep").exists()
    # a leftover of that depth in staging: the next start removes it and starts
    (Path(storage.staging) / "left").mkdir()
    _deep(Path(storage.staging) / "left", 1200)
    assert PosixStorage(root).prepare() == 1
    assert os.listdir(storage.staging) == []


async def test_copy_depth_limit_is_not_hit_by_ordinary_trees(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    storage = PosixStorage(root)
    storage.prepare()
    (root / "t").mkdir()
    _deep(root / "t", MAX_COPY_DEPTH - 1)
    assert await storage.copy(P("t"), P("c"), overwrite=False) is True


@pytest.mark.parametrize("where", [".segate", ".segate/tmp"])
def test_start_up_never_empties_a_folder_a_staging_link_leads_to(
    tmp_path: Path, where: str
) -> None:
    root = tmp_path / "root"
    (root / ".segate").mkdir(parents=True)
    victim = tmp_path / "victim"
    (victim / "tmp" / "sub").mkdir(parents=True)
    (victim / "tmp" / "precious").write_bytes(b"p")
    (victim / "precious").write_bytes(b"p")
    link = root / where
    if link.is_dir():
        link.rmdir()
    os.symlink(victim if where == ".segate" else victim / "tmp", link)
    storage = PosixStorage(root)
    assert storage.prepare() == 0
    assert (victim / "tmp" / "precious").exists() and (victim / "tmp" / "sub").is_dir()
    assert (victim / "precious").exists()
    assert not (root / where).is_symlink() and (root / ".segate" / "tmp").is_dir()


def test_start_up_with_a_dangling_staging_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path / "nowhere", root / ".segate")
    assert PosixStorage(root).prepare() == 0
    assert (root / ".segate" / "tmp").is_dir()


async def test_copy_drops_setuid_bits_and_foreign_xattrs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    storage = PosixStorage(root)
    storage.prepare()
    for f in (root / "s", root / "d" / "inner"):
        f.write_bytes(b"#!/bin/sh\n")
        os.chmod(f, 0o6755)
    trusted = True
    try:
        os.setxattr(root / "s", "trusted.segate-test", b"x")
    except OSError:
        trusted = False  # not root here: the user.* rule is still checked below
    os.setxattr(root / "s", "user.segate.props", b'{"{urn:x}p":"v"}')
    await storage.copy(P("s"), P("s2"), overwrite=False)
    await storage.copy(P("d"), P("d2"), overwrite=False)
    for f in (root / "s2", root / "d2" / "inner"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o755, oct(os.stat(f).st_mode)
    names = os.listxattr(root / "s2")
    assert "user.segate.props" in names
    if trusted:
        assert "trusted.segate-test" not in names


async def test_special_files_inside_a_copied_tree_are_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "t" / "sub").mkdir(parents=True)
    storage = PosixStorage(root)
    storage.prepare()
    fifo = root / "t" / "sub" / "fifo"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:  # blocks until someone opens the FIFO for reading
        fd = os.open(fifo, os.O_WRONLY)
        opened.set()
        os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.05)
    with pytest.raises(NotRegularError):
        await storage.copy(P("t"), P("c"), overwrite=False)
    time.sleep(0.1)
    assert not opened.is_set(), "the FIFO was opened by the copy"
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release the writer
    t.join(5)
    os.unlink(fifo)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "t" / "sub" / "sock"))
        with pytest.raises(NotRegularError):  # 403, not 500 "No such device or address"
            await storage.copy(P("t"), P("c"), overwrite=False)
    finally:
        sock.close()
    assert os.listdir(storage.staging) == []


async def test_a_link_loop_is_refused_not_an_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("loopb", root / "loopa")
    os.symlink("loopa", root / "loopb")
    storage = PosixStorage(root)
    storage.prepare()
    with pytest.raises(EscapeError):  # 403, was 500 "Too many levels of symbolic links"
        await storage.open_read(P("loopa"))
    with pytest.raises(EscapeError):
        await storage.mkdir(P("loopa", "x"))


def test_a_worker_does_not_empty_the_staging_folder(tmp_path: Path) -> None:
    """A multi-process server's parent empties the staging folder once before forking
    (segate.web.server.run); its workers only make sure it exists, so a worker starting late
    can never remove another worker's upload in progress."""
    from segate.config import settings_from_dict
    from segate.web.app import build_services

    root = tmp_path / "root"
    storage = PosixStorage(root)
    storage.prepare()
    (Path(storage.staging) / "in-progress").write_bytes(b"x")
    cfg = {"server": {"listen": "127.0.0.1:8443"}, "storage": {"root": str(root)}}
    settings = settings_from_dict(cfg, tmp_path)
    build_services(settings, clean=False)
    assert os.listdir(storage.staging) == ["in-progress"]
    build_services(settings)  # a single-process server cleans at its start
    assert os.listdir(storage.staging) == []


async def test_a_link_can_be_moved_into_the_folder_it_leads_to(tmp_path: Path) -> None:
    """MOVE renames the link itself, so this is no move of a folder into itself (it used to be
    refused, 409); COPY follows a source link, so copying it there still is, and so is moving
    the folder below itself through the link."""
    root = tmp_path / "root"
    storage = PosixStorage(root)
    storage.prepare()
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x")
    os.symlink("d", root / "l")
    with pytest.raises(InvalidTargetError):
        await storage.copy(P("l"), P("d", "copy"), overwrite=False)
    with pytest.raises(InvalidTargetError):
        await storage.move(P("d"), P("l", "inside"), overwrite=False)
    assert await storage.move(P("l"), P("d", "l"), overwrite=False) is True
    assert os.readlink(root / "d" / "l") == "d" and not os.path.lexists(root / "l")
    assert (root / "d" / "f").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("target", "dst"), [("d", ("d",)), ("d/sub", ("d",)), ("d", ("d", "sub")), ("d/f", ("d", "f"))]
)
async def test_a_link_never_replaces_what_it_leads_to(
    tmp_path: Path, target: str, dst: tuple[str, ...]
) -> None:
    """MOVE with overwrite of a link onto its own target, onto a folder holding its target, or
    onto something inside its target deleted that tree and left a link to nowhere (a second
    tester, after the change above); it is refused (409) and nothing is touched."""
    root = tmp_path / "root"
    storage = PosixStorage(root)
    storage.prepare()
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"precious")
    (root / "d" / "sub" / "g").write_bytes(b"precious")
    os.symlink(target, root / "l")
    with pytest.raises(InvalidTargetError):
        await storage.move(P("l"), P(*dst), overwrite=True)
    assert (root / "d" / "f").read_bytes() == b"precious"
    assert (root / "d" / "sub" / "g").read_bytes() == b"precious"
    assert os.readlink(root / "l") == target
