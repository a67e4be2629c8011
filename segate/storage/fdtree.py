"""Whole trees by descriptors: COPY (:func:`copy_fd`) and removal (:func:`remove_tree`).

``shutil.copytree`` and ``copy2`` walk the source by path, so a folder inside it swapped for a
symlink while it is copied would be followed out of the storage root; they also open FIFOs
(waiting for a writer) and keep setuid bits. Here every entry is opened ``O_PATH |
O_NOFOLLOW`` relative to its open folder and looked at before anything else: a link is copied
as a link (never read through), only regular files and folders are reopened for reading, and
a FIFO, socket or device node is refused (NotRegularError), never opened. Copies keep
permission bits without setuid/setgid/sticky, times, and ``user.*`` extended attributes (dead
properties, cached checksums): never ``trusted.*`` or ``security.*``.

``shutil.rmtree`` (the fd-based variant Python uses here) recurses once per level, so a tree
deeper than the interpreter's recursion limit (PUT with ``create_parents`` builds one in one
request) raised RecursionError: a 500 on DELETE and, in the staging clean-up at start-up, a
server that would not start. :func:`remove_tree` walks down and up again with one descriptor
per step and checks the inode of every ``..`` it climbs to, so a folder moved away meanwhile
is not followed out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod

from segate.storage.base import InvalidTargetError, NotRegularError

#: a tree deeper than this is not copied (409): each level holds two descriptors
MAX_COPY_DEPTH = 128
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOOK = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _copy_meta(src: int, dst: int, st: os.stat_result) -> None:
    try:
        names = os.listxattr(src)
    except OSError:
        names = []
    for n in names:
        if n.startswith("user."):
            with contextlib.suppress(OSError):
                os.setxattr(dst, n, os.getxattr(src, n))
    os.chmod(dst, stat_mod.S_IMODE(st.st_mode) & 0o777)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_data(src: int, dst: int) -> None:
    """All of ``src`` into ``dst``: in the kernel (``copy_file_range``, reflinks where the
    filesystem has them), else through a buffer."""
    offset = 0
    try:
        while n := os.copy_file_range(src, dst, 1 << 30, offset, offset):
            offset += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while data := os.pread(src, 1 << 20, offset):
        os.pwrite(dst, data, offset)
        offset += len(data)


def copy_fd(src: int, ddir: int, name: str, *, depth: int = 0) -> None:
    """Copy the open file or folder ``src`` to ``name`` in the folder ``ddir``."""
    st = os.fstat(src)
    if stat_mod.S_ISREG(st.st_mode):
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=ddir)
        try:
            _copy_data(src, dst)
            _copy_meta(src, dst, st)
        finally:
            os.close(dst)
        return
    if not stat_mod.S_ISDIR(st.st_mode):
        raise NotRegularError("not a regular file")
    if depth >= MAX_COPY_DEPTH:
        raise InvalidTargetError(f"the tree is deeper than {MAX_COPY_DEPTH} levels")
    os.mkdir(name, 0o700, dir_fd=ddir)
    dst = os.open(name, _DIR, dir_fd=ddir)
    try:
        with os.scandir(src) as it:
            names = [e.name for e in it]
        for child in names:
            _copy_entry(src, child, dst, depth)
        _copy_meta(src, dst, st)
    finally:
        os.close(dst)


def _copy_entry(sdir: int, child: str, ddir: int, depth: int) -> None:
    look = os.open(child, _LOOK, dir_fd=sdir)  # the entry itself, whatever it is
    try:
        mode = os.fstat(look).st_mode
        if stat_mod.S_ISLNK(mode):
            os.symlink(os.readlink("", dir_fd=look), child, dir_fd=ddir)
            return
        if stat_mod.S_ISDIR(mode):
            flags = os.O_RDONLY | os.O_DIRECTORY
        elif stat_mod.S_ISREG(mode):
            flags = os.O_RDONLY
        else:
            raise NotRegularError("not a regular file")
        fd = os.open(f"/proc/self/fd/{look}", flags | os.O_CLOEXEC)  # the object looked at
    finally:
        os.close(look)
    try:
        copy_fd(fd, ddir, child, depth=depth + 1)
    finally:
        os.close(fd)


def _same(st: os.stat_result, ident: tuple[int, int]) -> bool:
    return (st.st_dev, st.st_ino) == ident


def remove_tree(dfd: int, name: str) -> None:
    """Remove the folder ``name`` in the folder ``dfd`` and everything in it (links are
    removed, never followed). OSError as the calls raise it (FileNotFoundError if ``name`` is
    gone); EXDEV-style OSError if a folder was moved away while being emptied."""
    fd = os.open(name, _DIR, dir_fd=dfd)
    top = os.fstat(fd)
    #: (dev, ino) of each folder above ``fd`` up to ``name``, and ``fd``'s name in it
    chain: list[tuple[tuple[int, int], str]] = []
    retries = 0
    try:
        while True:
            sub = None
            with os.scandir(fd) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        sub = e.name
                        break
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.name, dir_fd=fd)
            if sub is not None:
                try:
                    nfd = os.open(sub, _DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        raise
                    with contextlib.suppress(FileNotFoundError):  # became a link or a file
                        os.unlink(sub, dir_fd=fd)
                    continue
                here = os.fstat(fd)
                chain.append(((here.st_dev, here.st_ino), sub))
                os.close(fd)
                fd = nfd
                continue
            # ``fd`` is empty: go up and remove it there
            emptied = os.fstat(fd)
            if not chain:
                break
            ident, child = chain[-1]
            up = os.open("..", _DIR, dir_fd=fd)
            if not _same(os.fstat(up), ident):
                os.close(up)
                raise OSError(errno.EXDEV, "a folder was moved while it was being removed")
            os.close(fd)
            fd = up
            chain.pop()
            try:
                if _same(os.stat(child, dir_fd=fd, follow_symlinks=False), _ident(emptied)):
                    os.rmdir(child, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY and retries < 100:
                    retries += 1  # something was added meanwhile: empty it again
                    continue
                if exc.errno != errno.ENOENT:
                    raise
    finally:
        os.close(fd)
    if _same(os.stat(name, dir_fd=dfd, follow_symlinks=False), _ident(top)):
        os.rmdir(name, dir_fd=dfd)


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino
