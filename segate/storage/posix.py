"""POSIX storage under one root directory.

* Confinement: a LogicalPath has no ``..`` and no separators inside segments (paths.py), so the
  only way out of the root is a symlink. Every access resolves the deepest existing ancestor with
  ``realpath`` and refuses anything whose real path leaves the real root (EscapeError). A path
  with no symlink on the way (and no dot name) is opened in one ``openat2`` call with
  ``RESOLVE_NO_SYMLINKS`` instead (storage/nolinks.py): the root being a real path, such a path
  is inside it. Where a path is checked first and opened after (stat, GET), the opened
  descriptor's own real path is checked again, so a link swapped in between by a local user is
  refused, not followed. Every change (PUT's commit, DELETE, MKCOL, MOVE, COPY, PROPPATCH) and
  every listing works on a checked descriptor of the parent collection (or of the object) and
  a name (``unlinkat``, ``renameat``, ``linkat``, ``mkdirat``, ``rmtree(dir_fd=)``,
  ``scandir(fd)``), never on the path again: a folder on the way swapped for a symlink after
  the check is not followed. Dead properties are read through the checked descriptor's
  ``/proc/self/fd`` link. A MOVE or COPY that must not replace renames with
  ``RENAME_NOREPLACE`` (storage/noreplace.py); trees are copied and removed by descriptors
  (storage/fdtree.py), and the staging folder is made and emptied by descriptors at start-up.
* Atomic uploads: data goes to ``<root>/.segate/tmp/<random>`` (same filesystem), then is
  renamed into place; without overwrite it is hard-linked (``link`` fails with EEXIST
  atomically) so a create-only writer can never replace a file (WLCG ``storage.create``).
  Readers never see a partial file; a failure leaves nothing behind. The staging folder is
  reserved (never served) and emptied at start-up.
* Checksums: adler32 is computed while an upload streams and stored with the file in an
  extended attribute (``user.segate.<algo>`` = ``<mtime_ns>:<size>:<value>``), so a later
  ``Want-Digest`` costs no re-read. Other algorithms are computed on demand and cached the same
  way. Filesystems without user xattrs simply recompute.
* Dead properties (PROPPATCH) are kept per resource in an extended attribute, so they move,
  copy and vanish with it (``storage/deadprops.py``).
* Blocking calls run in the default executor, one hop per large chunk (``io_chunk``, 4 MiB by
  default) so the event loop never waits on the disk. Two exceptions, both measured (README
  "Performance"): short metadata calls (stat, open, one resource's xattrs) run on the loop when
  ``[storage] metadata_in_loop`` (default), and GET reads data already in the page cache on the
  loop with ``RWF_NOWAIT``, which can never wait for the disk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat as stat_mod
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import google_crc32c

from segate.paths import RESERVED_SEGMENT, LogicalPath
from segate.storage import deadprops
from segate.storage.base import (
    ALGORITHMS,
    BackendError,
    EscapeError,
    ExistsError,
    FileInfo,
    InvalidTargetError,
    IsADirectoryError_,
    NoSpaceError,
    NotADirectoryError_,
    NotEmptyError,
    NotFoundError,
    NotRegularError,
    ParentMissingError,
    StorageError,
    UnavailableError,
)
from segate.storage.fdtree import copy_fd, remove_tree
from segate.storage.nolinks import open_no_symlinks
from segate.storage.noreplace import rename_noreplace

try:  # ISA-L's adler32: the same values, ~6x faster than zlib's (0.06 against 0.35 s per GiB)
    from isal.isal_zlib import adler32
except ImportError:  # a platform isal has no wheel for
    from zlib import adler32

T = TypeVar("T")
log = logging.getLogger("segate")
#: where an open descriptor's object can be named for path-only calls (xattrs): Linux procfs
_PROC_FD = os.path.isdir("/proc/self/fd")
XATTR_PREFIX = "user.segate."


def _map_oserror(exc: OSError) -> StorageError:
    e = exc.errno
    if e == errno.ENOENT:
        return NotFoundError("no such file or collection")
    if e == errno.EEXIST:
        return ExistsError("already exists")
    if e == errno.ENOTDIR:
        return NotADirectoryError_("a path component is not a collection")
    if e == errno.ELOOP:
        return EscapeError("symbolic links loop or are nested too deep")
    if e == errno.EISDIR:
        return IsADirectoryError_("is a collection")
    if e == errno.ENOTEMPTY:
        return NotEmptyError("collection is not empty")
    if e in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError("no space left on storage")
    if e in (errno.EACCES, errno.EPERM, errno.EIO, errno.EROFS):
        return UnavailableError(f"storage unavailable: {os.strerror(e)}")
    return BackendError(f"storage error: {os.strerror(e) if e else exc}")


def _info(path: LogicalPath, st: os.stat_result) -> FileInfo:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    return FileInfo(
        path=path,
        is_dir=is_dir,
        size=0 if is_dir else st.st_size,
        mtime=st.st_mtime,
        ctime=st.st_ctime,
        etag=f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"',
    )


def format_checksum(algorithm: str, value: Any) -> str:
    if algorithm in ("adler32", "crc32c"):
        return f"{int(value) & 0xFFFFFFFF:08x}"
    if algorithm == "md5":
        return base64.b64encode(value).decode("ascii")
    raise ValueError(algorithm)


class _Hasher:
    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.adler = 1
        self.crc = 0
        self.md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: bytes | memoryview) -> None:
        if self.algorithm == "adler32":
            self.adler = adler32(data, self.adler)
        elif self.algorithm == "crc32c":
            self.crc = google_crc32c.extend(self.crc, bytes(data))
        else:
            self.md5.update(data)

    def value(self) -> str:
        if self.algorithm == "adler32":
            return format_checksum("adler32", self.adler)
        if self.algorithm == "crc32c":
            return format_checksum("crc32c", self.crc)
        return format_checksum("md5", self.md5.digest())


def _get_cached(fd: int, algorithm: str, st: os.stat_result) -> str | None:
    try:
        raw = os.getxattr(fd, XATTR_PREFIX + algorithm).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    mtime_ns, _, rest = raw.partition(":")
    size, _, value = rest.partition(":")
    if mtime_ns == str(st.st_mtime_ns) and size == str(st.st_size) and value:
        return value
    return None


def _set_cached(fd: int, algorithm: str, st: os.stat_result, value: str) -> None:
    with contextlib.suppress(OSError):
        os.setxattr(fd, XATTR_PREFIX + algorithm, f"{st.st_mtime_ns}:{st.st_size}:{value}".encode())


_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def _read_cached(fd: int, buf: bytearray, pos: int) -> int:
    """Read into ``buf`` at ``pos`` only what the page cache has (never blocks): bytes read,
    0 when none (EAGAIN: not cached; EOPNOTSUPP etc.: the executor path decides)."""
    if not _NOWAIT:
        return 0
    try:
        return max(0, os.preadv(fd, [buf], pos, _NOWAIT))
    except OSError:
        return 0


def _discard_new_upload(made: asyncio.Future[tuple[int, str, int]]) -> None:
    """Remove the staging file and close the descriptors of an upload whose request was
    cancelled before it could take them over."""
    if made.cancelled() or made.exception() is not None:
        return
    staging, tmp, fd = made.result()
    try:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=staging)
    finally:
        os.close(staging)


#: bytes checksummed then written per ``writev`` of an upload: small enough that the kernel's
#: copy into the page cache finds the pieces still in the CPU cache, where the checksum left
#: them. Measured (adler32 + writev of 1 GiB in 256 KiB pieces, 2-core EPYC VM): 128-512 KiB
#: slices 0.55-0.65 s of CPU, 1 MiB 1.2 s, the whole 4 MiB block at once 1.5-2.2 s
_WRITE_SLICE = 256 << 10
_IOV_MAX = 1024


def _slices(parts: list[bytes]) -> Iterator[memoryview]:
    """The parts, in order, cut into pieces of at most :data:`_WRITE_SLICE` bytes (no copy)."""
    for part in parts:
        whole = memoryview(part)
        for off in range(0, len(whole), _WRITE_SLICE):
            yield whole[off : off + _WRITE_SLICE]


def _writev_all(fd: int, views: list[memoryview]) -> None:
    """``writev`` until every view is written (``views`` is consumed)."""
    while views:
        n = os.writev(fd, views)
        while n and views:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


_O_PATH = os.O_PATH | os.O_CLOEXEC


def _resolve(path: str) -> str:
    """``os.path.realpath`` of an existing path, resolved by the kernel in three syscalls.

    ``realpath`` lstat()s every component in Python (~30 us for six); opening the path with
    ``O_PATH`` and reading ``/proc/self/fd/N`` gives the same answer for an existing path.
    Anything unusual (a dangling link, no /proc) falls back to ``realpath``.
    """
    try:
        fd = os.open(path, _O_PATH)
    except OSError:
        return _realpath(path)
    try:
        resolved = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return _realpath(path)
    finally:
        os.close(fd)
    return resolved if resolved.startswith("/") else _realpath(path)


def _realpath(path: str) -> str:
    """``os.path.realpath``; a path changing under it (EINVAL from a readlink of what just
    stopped being a link) is refused, not a 500."""
    try:
        return os.path.realpath(path)
    except OSError as exc:
        raise EscapeError("path changed while being checked") from exc


_DIR_FD = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _own_folder(dfd: int, name: str, where: str) -> int:
    """The folder ``name`` in ``dfd``, made if missing; a link or file there is removed first
    (the entry itself, never what a link leads to)."""
    for _ in range(3):
        try:
            return os.open(name, _DIR_FD, dir_fd=dfd)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            log.warning("replacing %s/%s: not a folder (a link or a file)", where, name)
            os.unlink(name, dir_fd=dfd)
    raise OSError(errno.EEXIST, f"cannot make the folder {where}/{name}")


def _rename_new(sdir: int, sname: str, ddir: int, dname: str) -> None:
    """Rename to a destination that must not exist: atomic, so one that appeared since it was
    checked (another client's new file) is kept, and ExistsError (412) is raised."""
    try:
        rename_noreplace(sdir, sname, ddir, dname)
    except FileExistsError:
        raise ExistsError("destination exists") from None


def _clear_destination(
    dpfd: int, dname: str, dst_st: os.stat_result | None, src_is_dir: bool
) -> None:
    """Make room for an overwriting rename: a folder there is removed (rename(2) replaces
    only an empty one), and a file is unlinked only when a folder takes its place (rename(2)
    cannot put a folder over a file; a file over a file it replaces atomically)."""
    if dst_st is None:
        return
    if stat_mod.S_ISDIR(dst_st.st_mode):
        remove_tree(dpfd, dname)
    elif src_is_dir:
        os.unlink(dname, dir_fd=dpfd)


def _read_props(fd: int, real: str, st: os.stat_result | None = None) -> dict[str, str]:
    """The dead properties of the checked object ``fd`` (at ``real``), through its /proc link:
    the object checked, not the path again. With ``st`` (its ``fstat``), a settled listing is
    taken from memory (deadprops.read_at)."""
    link = f"/proc/self/fd/{fd}" if _PROC_FD else real
    return deadprops.read(link) if st is None else deadprops.read_at(link, st)


def _lstat_at(dfd: int, name: str) -> os.stat_result | None:
    """``name`` in the folder ``dfd``, not following a link; None if missing."""
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Parents:
    """``with _Parents(storage, a, b) as (a_parent_fd, a_name, b_parent_fd, b_name)``: both
    checked parent descriptors (:meth:`PosixStorage._parent_fd`), closed on exit."""

    def __init__(self, storage: PosixStorage, a: LogicalPath, b: LogicalPath) -> None:
        self.storage, self.a, self.b = storage, a, b
        self.fds: list[int] = []

    def __enter__(self) -> tuple[int, str, int, str]:
        afd, aname = self.storage._parent_fd(self.a)
        try:
            bfd, bname = self.storage._parent_fd(self.b)
        except BaseException:
            os.close(afd)
            raise
        self.fds = [afd, bfd]
        return afd, aname, bfd, bname

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)


class PosixReadHandle:
    def __init__(self, storage: PosixStorage, fd: int, info: FileInfo) -> None:
        self._storage = storage
        self._fd = fd
        self.info = info

    async def read_range(self, offset: int, length: int) -> AsyncIterator[bytes]:
        chunk = self._storage.chunk
        end = offset + length
        pos = offset
        while pos < end:
            n = min(chunk, end - pos)
            data = await self._storage._run(os.pread, self._fd, n, pos)
            if not data:
                raise BackendError("file shrank while being read")
            pos += len(data)
            yield data

    async def send_range(
        self, offset: int, length: int, write: Callable[[bytes | memoryview], Awaitable[None]]
    ) -> None:
        """``await write(piece)`` for the bytes [offset, offset+length), in pieces of at most
        ``read_chunk`` bytes (a GET's response body).

        Data already in the page cache is read on the event loop with ``RWF_NOWAIT`` (the
        kernel returns EAGAIN instead of waiting for the disk), so a cached file costs no
        executor hop per piece; whatever is not cached is read in the executor. Pieces are
        smaller than ``io_chunk`` because each may sit in the TLS transport until it is sent:
        this, not the file size, bounds memory per download. The buffer the cached reads go
        to is used again for the next piece when nothing else holds it any more (the TLS
        transport has encrypted it and dropped it: a refcount of 2, our name and
        getrefcount's argument); if anything still holds it, a fresh one is taken. A fresh
        1 MiB buffer per piece cost its zeroing and page faults (server CPU per 1 GiB GET
        0.82-0.95 -> 0.72-0.81 s).
        """
        chunk = self._storage.read_chunk
        fd = self._fd
        end = offset + length
        pos = offset
        buf = bytearray()
        while pos < end:
            n = min(chunk, end - pos)
            if len(buf) != n or sys.getrefcount(buf) != 2:
                buf = bytearray(n)
            got = _read_cached(fd, buf, pos)
            piece: bytes | memoryview
            if got == n:
                piece = memoryview(buf)
            elif got > 0:
                piece = memoryview(buf)[:got]
            else:
                piece = await self._storage._run(os.pread, fd, n, pos)
                if not piece:
                    raise BackendError("file shrank while being read")
            pos += len(piece)
            await write(piece)
            del piece  # a writer that kept it keeps ``buf`` referenced: see above

    async def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class PosixUpload:
    def __init__(
        self, storage: PosixStorage, target: LogicalPath, staging: int, tmp: str, fd: int
    ) -> None:
        self._storage = storage
        self.target = target
        self._staging = staging  # O_PATH descriptor of the staging folder, checked
        self._tmp = tmp  # the staging file's name in it
        self._fd = fd
        self._hasher: _Hasher | None = _Hasher("adler32")
        self.bytes_written = 0
        self._done = False
        #: held by the executor thread while it uses the fd, and by close/abort: a write still
        #: running after its request was cancelled can never hit a closed (or reused) fd
        self._fd_lock = threading.Lock()

    def _write_sync(self, data: bytes) -> None:
        with self._fd_lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, "upload was aborted")
            view = memoryview(data)
            if self._hasher is not None:
                self._hasher.update(view)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    async def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            await self._storage._run(self._write_sync, data)
        except OSError as exc:
            raise _map_oserror(exc) from exc
        self.bytes_written += len(data)

    def _write_parts_sync(self, parts: list[bytes]) -> None:
        with self._fd_lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, "upload was aborted")
            hasher = self._hasher
            views: list[memoryview] = []
            size = 0
            for view in _slices(parts):
                if hasher is not None:
                    hasher.update(view)
                views.append(view)
                size += len(view)
                if size >= _WRITE_SLICE or len(views) >= _IOV_MAX:
                    _writev_all(self._fd, views)
                    views, size = [], 0
            if views:
                _writev_all(self._fd, views)

    async def write_parts(self, parts: list[bytes]) -> None:
        """Append ``parts`` in one executor hop, checksummed there too.

        A PUT hands over the pieces it received as they are: joining them into one buffer
        first (and copying that into ``bytes``) cost two copies of every byte. They are
        checksummed and written in :data:`_WRITE_SLICE` slices, one ``writev`` each.
        """
        size = sum(len(p) for p in parts)
        if not size:
            return
        try:
            await self._storage._run(self._write_parts_sync, parts)
        except OSError as exc:
            raise _map_oserror(exc) from exc
        self.bytes_written += size

    @property
    def adler32(self) -> str | None:
        """adler32 of what ``write``/``write_parts`` appended so far; None after ``write_at``."""
        return None if self._hasher is None else self._hasher.value()

    def _write_parts_at_sync(
        self, offset: int, parts: list[bytes], adler: int | None
    ) -> int | None:
        with self._fd_lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, "upload was aborted")
            for view in _slices(parts):
                if adler is not None:
                    adler = adler32(view, adler)
                while view:
                    n = os.pwrite(self._fd, view, offset)
                    offset += n
                    view = view[n:]
        return adler

    async def write_parts_at(
        self, offset: int, parts: list[bytes], adler: int | None = None
    ) -> int | None:
        """Write ``parts`` back to back at ``offset`` (multi-stream pull), in one executor hop.

        With ``adler`` (a running adler32 value) the parts are checksummed in the same pass,
        slice by slice as they are written, and the updated value is returned. Like
        ``write_at``, this disables the upload's own (sequential) checksum.
        """
        self._hasher = None
        try:
            adler = await self._storage._run(self._write_parts_at_sync, offset, parts, adler)
        except OSError as exc:
            raise _map_oserror(exc) from exc
        self.bytes_written += sum(len(p) for p in parts)
        return adler

    async def write_at(self, offset: int, data: bytes) -> None:
        self._hasher = None
        try:
            await self._storage._run(os.pwrite, self._fd, data, offset)
        except OSError as exc:
            raise _map_oserror(exc) from exc
        self.bytes_written += len(data)

    def _commit_sync(self, overwrite: bool, make_parents: bool) -> bool:
        storage = self._storage
        with self._fd_lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, "upload was aborted")
            st = os.fstat(self._fd)
            if self._hasher is not None:
                _set_cached(self._fd, "adler32", st, self._hasher.value())
            os.close(self._fd)
            self._fd = -1
        try:
            pfd, name = storage._parent_fd(self.target)
        except ParentMissingError:
            if not make_parents:
                raise
            storage._makedirs_sync(self.target.parent)
            pfd, name = storage._parent_fd(self.target)
        try:
            try:  # (follows a link, as before: a link to a collection is a collection)
                is_dir = stat_mod.S_ISDIR(os.stat(name, dir_fd=pfd).st_mode)
            except OSError:
                is_dir = False
            if is_dir:
                raise IsADirectoryError_("target is a collection")
            staging, tmp = self._staging, self._tmp
            if not overwrite:
                # EEXIST if anything is there: atomic create-only
                os.link(tmp, name, src_dir_fd=staging, dst_dir_fd=pfd, follow_symlinks=False)
                os.unlink(tmp, dir_fd=staging)
                return True
            try:
                os.stat(name, dir_fd=pfd, follow_symlinks=False)
                existed = True
            except FileNotFoundError:
                existed = False
            os.rename(tmp, name, src_dir_fd=staging, dst_dir_fd=pfd)
            return not existed
        finally:
            os.close(pfd)

    async def commit(self, *, overwrite: bool, make_parents: bool) -> bool:
        try:
            created = await self._storage._run(self._commit_sync, overwrite, make_parents)
        except OSError as exc:
            await self.abort()
            raise _map_oserror(exc) from exc
        except StorageError:
            await self.abort()
            raise
        self._done = True
        self._close_staging()
        return created

    def _close_staging(self) -> None:
        if self._staging >= 0:
            fd, self._staging = self._staging, -1
            os.close(fd)

    async def abort(self) -> None:
        with self._fd_lock:  # waits (at most one write) for a write still in the executor
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)
        if not self._done:
            self._done = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp, dir_fd=self._staging)
        self._close_staging()


class PosixStorage:
    def __init__(
        self,
        root: Path,
        *,
        chunk: int = 4 << 20,
        read_chunk: int = 1 << 20,
        metadata_in_loop: bool = True,
    ) -> None:
        self.root = os.path.realpath(root)
        self.chunk = chunk
        #: GET piece size: each piece sits in the TLS transport until sent, so this (not the
        #: file size) bounds memory per download
        self.read_chunk = min(chunk, read_chunk)
        #: stat/open/xattr reads on the event loop (a local filesystem answers from the inode
        #: cache in microseconds; an executor hop costs tens) instead of in the executor
        self.metadata_in_loop = metadata_in_loop
        self.reserved = os.path.join(self.root, RESERVED_SEGMENT)
        self.staging = os.path.join(self.reserved, "tmp")
        self._join_prefix = os.path.join(self.root, "")  # (not "//" for a root of "/")
        self._reserved_prefix = self.reserved + os.sep

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self, *, clean: bool = True) -> int:
        """Create root and staging area; remove stale staging files (unless ``clean`` is
        False: a worker of a multi-process server, whose parent cleaned once before forking,
        must not remove another worker's upload in progress). Returns how many.

        By descriptors from the root down: a ``.segate`` or ``.segate/tmp`` that is a link or
        a file (a local user's doing) is removed, the entry itself and never what a link leads
        to, and replaced by a folder; so nothing outside is ever emptied. A staging entry that
        cannot be removed is logged and left: it never stops the start."""
        os.makedirs(self.root, exist_ok=True)
        rfd = os.open(self.root, _DIR_FD)
        try:
            sfd = _own_folder(rfd, RESERVED_SEGMENT, self.root)
            try:
                tfd = _own_folder(sfd, "tmp", self.reserved)
            finally:
                os.close(sfd)
        finally:
            os.close(rfd)
        removed = 0
        if not clean:
            os.close(tfd)
            return 0
        try:
            with os.scandir(tfd) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            for name, is_dir in entries:
                try:
                    if is_dir:
                        remove_tree(tfd, name)
                    else:
                        os.unlink(name, dir_fd=tfd)
                    removed += 1
                except Exception as exc:  # never a reason not to start
                    log.warning("cannot remove the stale staging entry %r: %s", name, exc)
        finally:
            os.close(tfd)
        return removed

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _meta(self, fn: Callable[..., T], *args: Any) -> T:
        """A short metadata call: inline when ``metadata_in_loop``, else in the executor."""
        if self.metadata_in_loop:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- path mapping -------------------------------------------------------------------------
    def _real(self, path: LogicalPath) -> str:
        # os.path.join(root, *segments) for segments that hold no "/" (LogicalPath's rule)
        return self._join_prefix + "/".join(path.segments) if path.segments else self.root

    def _check_confined(self, real: str) -> None:
        probe = real
        while not os.path.lexists(probe):
            if probe == self.root:  # the root itself cannot be seen (gone, or no permission)
                raise UnavailableError("storage unavailable: the storage root is not accessible")
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        self._check_resolved(_resolve(probe))

    def _check_resolved(self, resolved: str) -> None:
        """Refuse a resolved (real) path outside the root or inside the reserved area."""
        if resolved != self.root and not resolved.startswith(self._join_prefix):
            raise EscapeError("path leaves the storage root")
        if resolved == self.reserved or resolved.startswith(self._reserved_prefix):
            # a symlink inside the root that leads into the staging area
            raise EscapeError("path leads into the gateway's reserved area")

    def _confined(self, path: LogicalPath) -> str:
        real = self._real(path)
        self._check_confined(real)
        return real

    def _open_plain(self, real: str, flags: int) -> int:
        """``real`` opened with ``flags`` by :func:`open_no_symlinks` (one ``openat2``), or -1.

        Taken only for the root itself or a path below it whose components are not empty
        and do not start with ``.`` (so never ``.``, ``..`` or the reserved area, in any
        spelling a case-folding filesystem might accept): with no symlink on the way, such a
        path is where it says it is, inside the root. -1 for anything else (a symlink,
        missing, a dot name, too long, no openat2 here, ...), and the caller runs its general
        check."""
        if real != self.root:
            prefix = self._join_prefix
            if not real.startswith(prefix):
                return -1
            tail = real[len(prefix) - 1 :]  # from the "/" before the first component
            if "/." in tail or "//" in tail or tail.endswith("/"):
                return -1
        return open_no_symlinks(real, flags)

    def _confined_fd(self, real: str) -> int:
        """An ``O_PATH`` descriptor of ``real`` once it is known to be confined, or -1.

        First :meth:`_open_plain` (one syscall). Else the common case of
        :meth:`_check_confined` without its ``lstat`` walk: an existing path is opened with
        ``O_PATH`` (no side effect on any file type) and its real path read from
        ``/proc/self/fd`` and checked. A caller that can ask the descriptor (``fstat``) need
        not walk the path again, and then sees the very object that was checked. -1 (nothing
        open) when the path cannot be opened or resolved this way (missing, dangling link, no
        /proc, ...): the caller then runs the general :meth:`_check_confined`. EscapeError as
        there.
        """
        fd = self._open_plain(real, os.O_PATH)
        if fd >= 0:
            return fd
        try:
            fd = os.open(real, _O_PATH)
        except OSError:
            return -1
        try:
            resolved = os.readlink(f"/proc/self/fd/{fd}")
            if resolved.startswith("/"):
                self._check_resolved(resolved)
                return fd
        except OSError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return -1

    def _verify_fd(self, fd: int) -> None:
        """EscapeError unless the object ``fd`` refers to lies inside the root (outside the
        reserved area): what was opened after a path check is what was checked, even if a
        link on the way changed in between. Without /proc nothing more can be said."""
        try:
            resolved = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if resolved.endswith(" (deleted)") and os.fstat(fd).st_nlink == 0:
            # removed since it was opened: the name says nothing about where it was (and a
            # file really named "<root> (deleted)" beside the root must not pass as the root)
            raise FileNotFoundError(errno.ENOENT, "removed while being opened")
        if resolved.startswith("/"):
            self._check_resolved(resolved)

    def _checked_fd(self, real: str) -> int:
        """An ``O_PATH`` descriptor of ``real``, confined: :meth:`_confined_fd`, else the
        general check and an ``open`` whose result is checked again (:meth:`_verify_fd`).
        OSError as ``open`` raises it for what is missing or wrong; EscapeError as there."""
        fd = self._confined_fd(real)
        if fd >= 0:
            return fd
        self._check_confined(real)
        fd = os.open(real, _O_PATH)
        try:
            self._verify_fd(fd)  # a link swapped since the check: refused, not followed
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _dir_fd(self, real: str) -> int:
        """A checked ``O_PATH`` descriptor of the collection at ``real`` (:meth:`_checked_fd`);
        NotADirectoryError_ if it is something else. Changes are made relative to it."""
        fd = self._checked_fd(real)
        try:
            if not stat_mod.S_ISDIR(os.fstat(fd).st_mode):
                raise NotADirectoryError_("a path component is not a collection")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent_fd(self, path: LogicalPath) -> tuple[int, str]:
        """(checked descriptor of ``path``'s parent collection, ``path``'s name): where a change
        to ``path`` is made, with the ``*at`` calls, so that nothing on the way is resolved
        again after the check. ParentMissingError if the parent does not exist."""
        try:
            return self._dir_fd(self._real(path.parent)), path.name
        except FileNotFoundError:
            raise ParentMissingError("parent collection does not exist") from None

    def _reopen(self, pfd: int, real: str, flags: int) -> int:
        """The object of the checked ``O_PATH`` descriptor ``pfd`` opened with ``flags``:
        through its ``/proc/self/fd`` link (the very object checked, never a path again); with
        no /proc, ``real`` opened without following a last link and compared by inode."""
        if _PROC_FD:
            return os.open(f"/proc/self/fd/{pfd}", flags | os.O_CLOEXEC)
        fd = os.open(real, flags | os.O_CLOEXEC | os.O_NONBLOCK)
        want, got = os.fstat(pfd), os.fstat(fd)
        if (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino):
            os.close(fd)
            raise EscapeError("path changed while being opened")
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
        return fd

    # -- namespace ----------------------------------------------------------------------------
    def _stat_real(self, path: LogicalPath, real: str) -> FileInfo | None:
        """Stat ``real`` (``path``'s place) once its confinement is checked; None if missing."""
        try:
            fd = self._checked_fd(real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return _info(path, os.fstat(fd))
        finally:
            os.close(fd)

    def _stat_sync(self, path: LogicalPath) -> FileInfo | None:
        return self._stat_real(path, self._real(path))

    async def stat(self, path: LogicalPath) -> FileInfo | None:
        try:
            return await self._meta(self._stat_sync, path)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _stat_with_properties_sync(
        self, path: LogicalPath
    ) -> tuple[FileInfo | None, dict[str, str]]:
        real = self._real(path)
        try:
            fd = self._checked_fd(real)
        except (FileNotFoundError, NotADirectoryError):
            return None, {}
        try:
            st = os.fstat(fd)
            return _info(path, st), _read_props(fd, real, st)
        finally:
            os.close(fd)

    async def stat_with_properties(
        self, path: LogicalPath
    ) -> tuple[FileInfo | None, dict[str, str]]:
        """:meth:`stat` and :meth:`read_properties` of one resource with one confinement check
        (a Depth-0 PROPFIND's whole storage work)."""
        try:
            return await self._meta(self._stat_with_properties_sync, path)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _listdir_sync(self, path: LogicalPath, limit: int | None = None) -> list[FileInfo]:
        real = self._real(path)
        pfd = self._dir_fd(real)
        try:  # the checked folder itself is read, and its entries stat'ed relative to it
            dfd = self._reopen(pfd, real, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            os.close(pfd)
        out: list[FileInfo] = []
        try:
            with os.scandir(dfd) as it:
                for entry in it:
                    if limit is not None and len(out) > limit:
                        break  # one over the limit is enough for the caller to refuse
                    name = entry.name
                    if path.is_root and name == RESERVED_SEGMENT:
                        continue
                    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
                        continue  # not valid UTF-8: cannot be named in a URL we can parse back
                    try:
                        if entry.is_symlink():
                            st = self._link_stat(dfd, name)
                        else:
                            st = entry.stat(follow_symlinks=False)
                    except (OSError, EscapeError):
                        continue  # dangling or escaping links are not shown
                    out.append(_info(path.child(name), st))
        finally:
            os.close(dfd)
        out.sort(key=lambda i: i.path.name)
        return out

    def _link_stat(self, dfd: int, name: str) -> os.stat_result:
        """The stat of what the link ``name`` in the folder ``dfd`` leads to, if that is
        inside the root: the link is opened (``O_PATH``) and the opened object checked."""
        fd = os.open(name, _O_PATH, dir_fd=dfd)
        try:
            self._verify_fd(fd)
            return os.fstat(fd)
        finally:
            os.close(fd)

    async def listdir(self, path: LogicalPath, limit: int | None = None) -> list[FileInfo]:
        """The collection's entries, sorted by name; with ``limit``, at most ``limit + 1``
        (the directory is not read further: a caller refuses more than ``limit`` anyway)."""
        try:
            return await self._run(self._listdir_sync, path, limit)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _mkdir_sync(self, path: LogicalPath) -> None:
        if path.is_root:
            raise ExistsError("already exists")
        pfd, name = self._parent_fd(path)
        try:
            os.mkdir(name, 0o755, dir_fd=pfd)
        finally:
            os.close(pfd)

    async def mkdir(self, path: LogicalPath) -> None:
        try:
            await self._run(self._mkdir_sync, path)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _missing_sync(self, path: LogicalPath) -> list[LogicalPath]:
        missing: list[LogicalPath] = []
        p = path.parent
        while not p.is_root:
            real = self._confined(p)
            if os.path.isdir(real):
                break
            if os.path.lexists(real):
                raise NotADirectoryError_("a path component is not a collection")
            missing.append(p)
            p = p.parent
        missing.reverse()
        return missing

    async def missing_ancestors(self, path: LogicalPath) -> list[LogicalPath]:
        try:
            return await self._meta(self._missing_sync, path)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _makedirs_sync(self, path: LogicalPath) -> None:
        """``path`` and its missing ancestors created, each in its checked parent."""
        chain: list[LogicalPath] = []
        p = path
        while not p.is_root:
            chain.append(p)
            p = p.parent
        for p in reversed(chain):
            pfd, name = self._parent_fd(p)
            try:
                os.mkdir(name, 0o755, dir_fd=pfd)
            except FileExistsError:
                pass
            finally:
                os.close(pfd)
        os.close(self._dir_fd(self._real(path)))  # there, a collection, inside the root

    async def makedirs(self, path: LogicalPath) -> None:
        try:
            await self._run(self._makedirs_sync, path)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _delete_sync(self, path: LogicalPath, recursive: bool) -> None:
        if path.is_root:
            raise InvalidTargetError("cannot delete the storage root")
        try:
            pfd, name = self._parent_fd(path)
        except ParentMissingError:
            raise NotFoundError("no such file or collection") from None
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat_mod.S_ISDIR(st.st_mode):
                if recursive:
                    remove_tree(pfd, name)  # by descriptors: links inside are not followed
                else:
                    os.rmdir(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def _delete_link_sync(self, path: LogicalPath) -> bool:
        if path.is_root:
            return False
        try:
            pfd, name = self._parent_fd(path)
        except (ParentMissingError, NotADirectoryError_, NotADirectoryError):
            return False
        try:
            st = _lstat_at(pfd, name)
            if st is None or not stat_mod.S_ISLNK(st.st_mode):
                return False
            os.unlink(name, dir_fd=pfd)  # in the same checked folder, right after the look
            return True
        finally:
            os.close(pfd)

    async def delete_link(self, path: LogicalPath) -> bool:
        """Remove ``path``'s own entry if it is a symbolic link (whatever it leads to) and say
        so; False, with nothing done, for anything else (then :meth:`delete` applies)."""
        try:
            return await self._meta(self._delete_link_sync, path)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    async def delete(self, path: LogicalPath, *, recursive: bool = False) -> None:
        try:
            await self._run(self._delete_sync, path, recursive)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _transfer_targets(
        self, src: LogicalPath, dst: LogicalPath, *, link_itself: bool = False
    ) -> str:
        """Checks shared by MOVE and COPY; returns the source's real path.

        Neither end may contain the other - logically or through symlinks: replacing an
        ancestor of the source (the root included) would delete the source's whole tree
        before the rename, and copying into itself never ends. With ``link_itself`` (MOVE,
        which renames a link and not what it leads to) a source that is a link is the link's
        own entry, so moving a link into the folder it leads to is allowed; but a destination
        that is replaced may not be or contain what the link leads to, nor lie inside it (the
        link would land on its own deleted target).
        """
        if dst.is_root or dst.is_within(src) or src.is_within(dst):
            raise InvalidTargetError("source and destination may not contain each other")
        rsrc, rdst = self._confined(src), self._confined(dst)
        if not os.path.lexists(rsrc):
            raise NotFoundError("source does not exist")
        parent = os.path.dirname(rdst)
        if not os.path.isdir(parent):
            raise ParentMissingError("destination parent collection does not exist")
        real_dst = os.path.join(_resolve(parent), os.path.basename(rdst))
        replaced = os.path.lexists(real_dst)
        if replaced and os.path.isdir(real_dst) and not os.path.islink(rdst):
            real_dst = _resolve(real_dst)
        pairs = []
        if link_itself and os.path.islink(rsrc):
            own = os.path.join(_resolve(os.path.dirname(rsrc)), os.path.basename(rsrc))
            pairs.append(own)
            if replaced:
                pairs.append(_resolve(rsrc))  # what the link leads to
        else:
            pairs.append(_resolve(rsrc) if os.path.isdir(rsrc) else rsrc)
        for real_src in pairs:
            for a, b in ((real_src, real_dst), (real_dst, real_src)):
                if a == b or a.startswith(b.rstrip(os.sep) + os.sep):
                    raise InvalidTargetError("source and destination may not contain each other")
        return rsrc

    def _move_sync(self, src: LogicalPath, dst: LogicalPath, overwrite: bool) -> bool:
        self._transfer_targets(src, dst, link_itself=True)
        with _Parents(self, src, dst) as (spfd, sname, dpfd, dname):
            sst = os.stat(sname, dir_fd=spfd, follow_symlinks=False)
            dst_st = _lstat_at(dpfd, dname)
            if not overwrite:
                _rename_new(spfd, sname, dpfd, dname)
                return True
            _clear_destination(dpfd, dname, dst_st, stat_mod.S_ISDIR(sst.st_mode))
            os.rename(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd)
        return dst_st is None

    async def move(self, src: LogicalPath, dst: LogicalPath, *, overwrite: bool) -> bool:
        try:
            return await self._run(self._move_sync, src, dst, overwrite)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _copy_sync(self, src: LogicalPath, dst: LogicalPath, overwrite: bool) -> bool:
        rsrc = self._transfer_targets(src, dst)
        # the source itself may be a link inside the root (followed, as before); below it,
        # links are copied as links and nothing is resolved by path again
        pfd = self._checked_fd(rsrc)
        try:
            st = os.fstat(pfd)
            if stat_mod.S_ISDIR(st.st_mode):
                sfd = self._reopen(pfd, rsrc, os.O_RDONLY | os.O_DIRECTORY)
            elif stat_mod.S_ISREG(st.st_mode):
                sfd = self._reopen(pfd, rsrc, os.O_RDONLY)
            else:
                raise NotRegularError("not a regular file")
        finally:
            os.close(pfd)
        tmp = secrets.token_hex(12)
        try:
            staging = self._staging_fd()
        except BaseException:
            os.close(sfd)
            raise
        try:
            dpfd, dname = self._parent_fd(dst)
            try:
                dst_st = _lstat_at(dpfd, dname)
                if dst_st is not None and not overwrite:
                    raise ExistsError("destination exists")
                copy_fd(sfd, staging, tmp)
                if not overwrite:
                    _rename_new(staging, tmp, dpfd, dname)
                    return True
                _clear_destination(dpfd, dname, dst_st, stat_mod.S_ISDIR(st.st_mode))
                os.rename(tmp, dname, src_dir_fd=staging, dst_dir_fd=dpfd)
            finally:
                os.close(dpfd)
        finally:
            try:
                os.close(sfd)
                st_tmp = _lstat_at(staging, tmp)
                if st_tmp is not None:
                    if stat_mod.S_ISDIR(st_tmp.st_mode):
                        remove_tree(staging, tmp)
                    else:
                        os.unlink(tmp, dir_fd=staging)
            except OSError as exc:
                log.warning("cannot remove the staging copy %s: %s", tmp, exc)
            finally:
                os.close(staging)
        return dst_st is None

    async def copy(self, src: LogicalPath, dst: LogicalPath, *, overwrite: bool) -> bool:
        try:
            return await self._run(self._copy_sync, src, dst, overwrite)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    # -- dead properties (storage/deadprops.py) ----------------------------------------------
    def _read_properties_sync(self, path: LogicalPath) -> dict[str, str]:
        real = self._real(path)
        try:
            fd = self._checked_fd(real)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        try:
            return _read_props(fd, real)
        finally:
            os.close(fd)

    async def read_properties(self, paths: Sequence[LogicalPath]) -> list[dict[str, str]]:
        def run() -> list[dict[str, str]]:
            return [self._read_properties_sync(p) for p in paths]

        try:
            return await (self._meta(run) if len(paths) == 1 else self._run(run))
        except OSError as exc:
            raise _map_oserror(exc) from exc

    def _patch_properties_sync(self, path: LogicalPath, changes: deadprops.PropPatch) -> None:
        real = self._real(path)
        try:
            pfd = self._checked_fd(real)
        except FileNotFoundError:
            raise NotFoundError("no such file or collection") from None
        try:
            mode = os.fstat(pfd).st_mode
            if not (stat_mod.S_ISREG(mode) or stat_mod.S_ISDIR(mode)):
                raise NotRegularError("not a regular file")  # never open a FIFO or a device
            fd = self._reopen(pfd, real, os.O_RDONLY)
        finally:
            os.close(pfd)
        try:
            deadprops.patch_fd(fd, changes)
        finally:
            os.close(fd)

    async def patch_properties(self, path: LogicalPath, changes: deadprops.PropPatch) -> None:
        try:
            await self._run(self._patch_properties_sync, path, changes)
        except OSError as exc:
            raise _map_oserror(exc) from exc

    # -- data ---------------------------------------------------------------------------------
    def _open_sync(self, path: LogicalPath) -> tuple[int, FileInfo]:
        """A descriptor for reading ``path``, a regular file inside the root, and its info.

        The object is opened ``O_PATH`` first (no side effect on any file type) and checked:
        a FIFO, a socket or a device node is never opened for reading (for a tape drive that
        could mean a rewind; for a FIFO, a wait for a writer). Only a regular file is then
        opened for reading, through its ``/proc/self/fd`` link: the very object checked."""
        real = self._real(path)
        pfd = self._checked_fd(real)
        try:
            st = os.fstat(pfd)
            if not stat_mod.S_ISREG(st.st_mode):
                if stat_mod.S_ISDIR(st.st_mode):
                    raise IsADirectoryError_("is a collection")
                raise NotRegularError("not a regular file")
            fd = self._reopen(pfd, real, os.O_RDONLY)
        finally:
            os.close(pfd)
        return fd, _info(path, st)

    async def open_read(self, path: LogicalPath) -> PosixReadHandle:
        try:
            fd, info = await self._meta(self._open_sync, path)
        except OSError as exc:
            raise _map_oserror(exc) from exc
        return PosixReadHandle(self, fd, info)

    def _staging_fd(self) -> int:
        """A checked ``O_PATH`` descriptor of the staging folder, where staging files are made
        by name: a reserved folder replaced by a link cannot move them out of the root."""
        fd = os.open(self.staging, _O_PATH | os.O_DIRECTORY)
        try:
            resolved = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return fd  # no /proc: nothing more can be said
        if resolved != self.staging:
            os.close(fd)
            raise EscapeError("the staging folder is not where it should be")
        return fd

    async def new_upload(self, path: LogicalPath) -> PosixUpload:
        def run() -> tuple[int, str, int]:
            self._confined(path)
            staging = self._staging_fd()
            tmp = secrets.token_hex(16)
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                fd = os.open(tmp, flags, 0o644, dir_fd=staging)
            except BaseException:
                os.close(staging)
                raise
            return staging, tmp, fd

        made = asyncio.get_running_loop().run_in_executor(None, run)
        try:
            staging, tmp, fd = await asyncio.shield(made)
        except OSError as exc:
            raise _map_oserror(exc) from exc
        except asyncio.CancelledError:
            # the request was cancelled while the thread was creating the staging file: the
            # thread still finishes, so remove what it made once it has (a tester found a
            # staging file and two descriptors left per upload cancelled here)
            made.add_done_callback(_discard_new_upload)
            raise
        return PosixUpload(self, path, staging, tmp, fd)

    def _checksum_sync(self, path: LogicalPath, algorithm: str) -> str:
        fd, _ = self._open_sync(path)
        try:
            st = os.fstat(fd)
            cached = _get_cached(fd, algorithm, st)
            if cached is not None:
                return cached
            h = _Hasher(algorithm)
            offset = 0
            while True:
                data = os.pread(fd, self.chunk, offset)
                if not data:
                    break
                h.update(data)
                offset += len(data)
            value = h.value()
            _set_cached(fd, algorithm, st, value)
            return value
        finally:
            os.close(fd)

    async def checksum(self, path: LogicalPath, algorithm: str) -> str:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unsupported checksum {algorithm}")
        try:
            return await self._run(self._checksum_sync, path, algorithm)
        except OSError as exc:
            raise _map_oserror(exc) from exc
