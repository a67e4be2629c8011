"""COPY by descriptors: a file or a whole tree copied as ``shutil.copy2`` /
``copytree(symlinks=True)`` would, without resolving any path again.

``copytree`` walks the source by path, so a folder inside it swapped for a symlink while it is
copied would be followed out of the storage root. Here every entry is opened relative to its
open folder with ``O_NOFOLLOW``, links are copied as links (never read through), and a FIFO,
socket or device node is refused instead of opened (opening a FIFO waits for a writer).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod

from segate.storage.base import NotRegularError


def _copy_meta(src: int, dst: int, st: os.stat_result) -> None:
    """What ``shutil.copy2`` keeps besides the data: extended attributes (dead properties,
    cached checksums), permission bits and times."""
    try:
        names = os.listxattr(src)
    except OSError:
        names = []
    for n in names:
        with contextlib.suppress(OSError):
            os.setxattr(dst, n, os.getxattr(src, n))
    os.chmod(dst, stat_mod.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_fd(src: int, ddir: int, name: str) -> None:
    """Copy the open file or folder ``src`` to ``name`` in the folder ``ddir``, as
    ``copytree(symlinks=True)`` / ``copy2`` would, but by descriptors only: entries are opened
    relative to their folder with ``O_NOFOLLOW``, links are copied as links, and a FIFO, socket
    or device node is refused (NotRegularError), never opened."""
    st = os.fstat(src)
    if stat_mod.S_ISDIR(st.st_mode):
        os.mkdir(name, 0o700, dir_fd=ddir)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(name, flags, dir_fd=ddir)
        try:
            with os.scandir(src) as it:
                entries = [(e.name, e.is_symlink()) for e in it]
            for child, is_link in entries:
                if is_link:
                    os.symlink(os.readlink(child, dir_fd=src), child, dir_fd=dst)
                    continue
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                try:
                    cfd = os.open(child, flags, dir_fd=src)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:  # became a link since it was listed
                        os.symlink(os.readlink(child, dir_fd=src), child, dir_fd=dst)
                        continue
                    raise
                try:
                    cmode = os.fstat(cfd).st_mode
                    if not (stat_mod.S_ISDIR(cmode) or stat_mod.S_ISREG(cmode)):
                        raise NotRegularError("not a regular file")
                    os.set_blocking(cfd, True)
                    copy_fd(cfd, dst, child)
                finally:
                    os.close(cfd)
            _copy_meta(src, dst, st)
        finally:
            os.close(dst)
        return
    if not stat_mod.S_ISREG(st.st_mode):
        raise NotRegularError("not a regular file")
    dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=ddir)
    try:
        _copy_data(src, dst)
        _copy_meta(src, dst, st)
    finally:
        os.close(dst)


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
