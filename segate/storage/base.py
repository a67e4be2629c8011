"""The storage contract every backend keeps, its values and its errors.

Errors say what is wrong with the namespace, not which HTTP status that is; the web layer maps
them (``web/middleware.py``).

    StorageError
    ├── NotFoundError        the path (or a parent needed to reach it) does not exist
    ├── ExistsError          something is already there
    ├── ParentMissingError   the parent collection does not exist
    ├── NotADirectoryError_  a path component is a file
    ├── IsADirectoryError_   a file operation on a collection
    ├── NotEmptyError        a collection still has members
    ├── NoSpaceError         ENOSPC / EDQUOT
    ├── EscapeError          a symlink would lead outside the root
    ├── InvalidTargetError   e.g. moving a collection into itself
    └── BackendError         anything else from the OS (EIO, EACCES on the root, ...)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from segate.paths import LogicalPath


class StorageError(Exception):
    pass


class NotFoundError(StorageError):
    pass


class ExistsError(StorageError):
    pass


class ParentMissingError(StorageError):
    pass


class NotADirectoryError_(StorageError):
    pass


class IsADirectoryError_(StorageError):
    pass


class NotEmptyError(StorageError):
    pass


class NoSpaceError(StorageError):
    pass


class EscapeError(StorageError):
    pass


class InvalidTargetError(StorageError):
    pass


class NotRegularError(StorageError):
    """A FIFO, socket or device node in the storage area: never opened (a FIFO's open would
    block the worker until some writer appears), answered 403."""


class BackendError(StorageError):
    pass


class UnavailableError(BackendError):
    """The storage cannot be read or written at all (EACCES, EIO, EROFS): 503, not 500."""


#: checksum algorithms the storage can compute: adler32 (8 hex), md5 (base64), crc32c (8 hex)
ALGORITHMS = ("adler32", "md5", "crc32c")


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: LogicalPath
    is_dir: bool
    size: int
    mtime: float
    ctime: float
    etag: str


class ReadHandle(Protocol):
    info: FileInfo

    async def read_range(self, offset: int, length: int) -> AsyncIterator[bytes]:
        """Yield the bytes [offset, offset+length) in large chunks."""
        ...

    async def close(self) -> None: ...


class Upload(Protocol):
    """A file being written under a hidden staging name; visible only after ``commit``."""

    bytes_written: int

    async def write(self, data: bytes) -> None: ...

    async def write_at(self, offset: int, data: bytes) -> None:
        """Positional write (multi-stream transfers); disables the on-the-fly checksum."""
        ...

    async def commit(self, *, overwrite: bool, make_parents: bool) -> bool:
        """Atomically rename into place. Returns True if created, False if replaced.

        Raises ExistsError when the target exists and ``overwrite`` is false (checked
        atomically), IsADirectoryError_ onto a collection, ParentMissingError when the parent
        is missing and ``make_parents`` is false.
        """
        ...

    async def abort(self) -> None:
        """Remove the staging file. Safe to call more than once and after commit."""
        ...


class Storage(Protocol):
    async def stat(self, path: LogicalPath) -> FileInfo | None: ...

    async def listdir(self, path: LogicalPath) -> list[FileInfo]: ...

    async def mkdir(self, path: LogicalPath) -> None: ...

    async def missing_ancestors(self, path: LogicalPath) -> list[LogicalPath]:
        """The ancestors of ``path`` (excluding path) that do not exist, top first."""
        ...

    async def makedirs(self, path: LogicalPath) -> None: ...

    async def delete(self, path: LogicalPath, *, recursive: bool = False) -> None: ...

    async def move(self, src: LogicalPath, dst: LogicalPath, *, overwrite: bool) -> bool: ...

    async def copy(self, src: LogicalPath, dst: LogicalPath, *, overwrite: bool) -> bool: ...

    async def open_read(self, path: LogicalPath) -> ReadHandle: ...

    async def new_upload(self, path: LogicalPath) -> Upload: ...

    async def checksum(self, path: LogicalPath, algorithm: str) -> str:
        """Formatted value for ``Digest:`` (adler32/crc32c 8 hex digits, md5 base64)."""
        ...

    async def read_properties(self, paths: Sequence[LogicalPath]) -> list[dict[str, str]]:
        """Dead properties (opaque name -> value) of each path, {} where none or missing."""
        ...

    async def patch_properties(
        self, path: LogicalPath, changes: Sequence[tuple[str, str | None]]
    ) -> None:
        """Set (value) or remove (None) dead properties in order, all or nothing.

        Raises NotFoundError, NoSpaceError (too much to store), BackendError.
        """
        ...
