"""Rename without replacing: Linux ``renameat2(..., RENAME_NOREPLACE)``.

A MOVE or COPY whose destination did not exist when it was authorised (the requester may hold
only ``storage.create``) must not replace one that appears before the rename: checking first
and renaming after leaves a window in which another client's new file or folder is replaced
(a tester's finding). ``RENAME_NOREPLACE`` fails with EEXIST atomically instead. The standard
library has no binding; glibc (2.28+) exports ``renameat2``, called through ctypes. Where it
is missing, a file is moved with ``link`` + ``unlink`` (also atomic create-only) and only a
folder keeps the check-then-rename window.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stat_mod
from typing import Any

RENAME_NOREPLACE = 1


def _load() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return fn


_renameat2 = _load()


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Move ``src`` (in the folder ``src_dir``) to ``dst`` (in ``dst_dir``); FileExistsError
    if anything is at ``dst``, whatever it is."""
    fn = _renameat2
    if fn is not None:
        if fn(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        e = ctypes.get_errno()
        if e not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: a filesystem without the flag
            raise OSError(e, os.strerror(e), dst)
    if not stat_mod.S_ISDIR(os.stat(src, dir_fd=src_dir, follow_symlinks=False).st_mode):
        os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        os.unlink(src, dir_fd=src_dir)
        return
    try:
        os.stat(dst, dir_fd=dst_dir, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


def available() -> bool:
    return _renameat2 is not None
