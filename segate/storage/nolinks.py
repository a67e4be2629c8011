"""Open a path with no symlink on the way, in one syscall: Linux ``openat2`` with
``RESOLVE_NO_SYMLINKS``.

The storage's confinement check (posix.py) otherwise opens a path ``O_PATH``, reads its real
path back from ``/proc/self/fd`` and compares it with the root: three syscalls, the
``readlink`` alone walking procfs. The root is already a real path (``realpath`` at start), so
a path made of the root and components that are neither empty nor ``.``/``..`` (the caller
checks that) and that resolves with no symlink at all is exactly where it says it is: inside
the root. ``openat2(AT_FDCWD, path, how)`` with ``RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS`` opens such a path or fails, in one call that walks the path as
``open`` does (a vanished, replaced or mounted-over root is seen as ``open`` sees it).

Only a fast path: :func:`open_no_symlinks` returns -1 for every failure (a symlink on the
way, missing, no permission, too long, an old kernel, a seccomp filter answering ENOSYS, not
Linux), and the caller then runs its general check, which decides with the same answers as
before. So paths through symlinks (allowed when they stay inside the root) keep their
semantics exactly.

No Python binding exists (the standard library has no ``openat2``); ctypes calls libc's
``syscall(2)`` with the syscall number, which is the same on every Linux architecture that
has one (437, from the unified syscall table added in 5.1).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

SYS_OPENAT2 = 437
AT_FDCWD = -100
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
#: what every call resolves with: no symlink at all, no /proc magic link
RESOLVE = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_syscall: Any = None
#: per open flags: the (byref(how), sizeof(how)) arguments, built once
_hows: dict[int, tuple[Any, int]] = {}


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


def _how(flags: int) -> tuple[Any, int]:
    got = _hows.get(flags)
    if got is None:
        how = _OpenHow(flags, 0, RESOLVE)
        got = _hows[flags] = (ctypes.byref(how), ctypes.sizeof(how))
    return got


def open_no_symlinks(path: str, flags: int) -> int:
    """A descriptor of ``path`` resolved without following any symlink, or -1.

    ``flags`` are ``os.open`` flags (``O_CLOEXEC`` is added); ``path`` is encoded as
    ``os.open`` encodes it (``os.fsencode``)."""
    fn = _syscall
    if fn is None:
        return -1
    if "\x00" in path:
        return -1  # C would see a shorter path (LogicalPath refuses NULs; belt and braces)
    ref, size = _how(flags | os.O_CLOEXEC)
    fd: int = fn(SYS_OPENAT2, AT_FDCWD, os.fsencode(path), ref, size)
    return fd if fd >= 0 else -1


def available() -> bool:
    """Whether openat2 works here (probed once at import: ENOSYS, EPERM from seccomp...)."""
    return _syscall is not None


def _probe() -> None:
    global _syscall
    fn = _load()
    if fn is None:
        return
    _syscall = fn
    fd = open_no_symlinks("/", os.O_PATH)
    if fd < 0:
        _syscall = None
    else:
        os.close(fd)


_probe()
