"""Dead properties of a resource (RFC 4918 §4, §9.2): opaque name -> value strings on POSIX.

Storage does not interpret them: the WebDAV layer chooses the names (Clark notation
``{namespace}local``) and the values (a serialized XML element); here they are only kept.

* They live in one extended attribute of the file or directory itself,
  ``user.segate.props`` = a JSON object. So they follow the inode: ``rename`` (MOVE) keeps them,
  ``unlink``/``rmdir`` (DELETE) drops them, and ``shutil.copy2``/``copytree`` (COPY) copy them
  (``copystat`` copies ``user.*`` attributes on Linux). A PUT that replaces a file replaces the
  resource, so the new file starts without dead properties.
* A patch is a list of (name, value or None = remove) applied in order, all or nothing, under
  an exclusive ``flock`` on the resource, so concurrent patches (also from other worker
  processes) never lose each other's updates.
* Size: the encoded object is at most :data:`MAX_BYTES` (the Linux limit for one attribute);
  ext4 holds about 4 KiB of attributes per inode. Too much is :class:`NoSpaceError`
  (RFC 4918 §9.2.1: 507). A filesystem without user extended attributes reads as "no dead
  properties" and refuses patches with :class:`BackendError`.
* Unreadable or foreign content in the attribute reads as "no dead properties" (never a 500).
* Settled listings are remembered (:func:`read_at`): every change to an inode's extended
  attributes sets its ctime, so the listing read from an inode is the listing of every later
  stat with the same (device, inode, ctime). Only inodes whose ctime is over
  :data:`SETTLED_NS` old are remembered: ctime comes from a clock that may tick only every few
  milliseconds, so two changes within one tick could share a ctime; one made after the read
  cannot share a ctime that was already two seconds old. A PROPFIND Depth 0 of such a resource
  then costs no ``listxattr`` (through procfs, the dearest call of its storage work).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Sequence

from segate.storage.base import BackendError, NoSpaceError

XATTR_NAME = "user.segate.props"
#: XATTR_SIZE_MAX on Linux
MAX_BYTES = 65536

PropPatch = Sequence[tuple[str, str | None]]


def _decode(raw: bytes) -> dict[str, str]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _read_fd(fd: int) -> dict[str, str]:
    try:
        return _decode(os.getxattr(fd, XATTR_NAME))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise


def read(real: str) -> dict[str, str]:
    """The dead properties of the file or directory at ``real`` ({} if none or missing).

    The attribute names are listed first: most resources have none, and a listing that lacks
    it is cheaper than the ENODATA error ``getxattr`` would raise."""
    try:
        if XATTR_NAME not in os.listxattr(real):
            return {}
        return _decode(os.getxattr(real, XATTR_NAME))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
            return {}
        if exc.errno == errno.ENOTDIR:
            return {}
        raise


#: a ctime this much older than the clock is settled (module docstring)
SETTLED_NS = 2_000_000_000
#: remembered listings per process; all are dropped when full
SETTLED_MAX = 4096
_settled: dict[tuple[int, int, int], tuple[tuple[str, str], ...]] = {}


def read_at(real: str, st: os.stat_result) -> dict[str, str]:
    """:func:`read` of the object ``st`` describes (``real`` being a path to that very object,
    e.g. its /proc descriptor link), remembered once its ctime is settled."""
    key = (st.st_dev, st.st_ino, st.st_ctime_ns)
    hit = _settled.get(key)
    if hit is not None:
        return dict(hit)
    props = read(real)
    if time.time_ns() - st.st_ctime_ns > SETTLED_NS:
        if len(_settled) >= SETTLED_MAX:
            _settled.clear()
        _settled[key] = tuple(props.items())
    return props


def patch_fd(fd: int, changes: PropPatch) -> None:
    """Apply ``changes`` in order to the open file or directory ``fd`` (value None removes;
    removing an absent name is fine). Serialised per resource by ``flock``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        props = _read_fd(fd)
        for name, value in changes:
            if value is None:
                props.pop(name, None)
            else:
                props[name] = value
        if not props:
            with contextlib.suppress(OSError):
                os.removexattr(fd, XATTR_NAME)
            return
        raw = json.dumps(props, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(raw) > MAX_BYTES:
            raise NoSpaceError("too many or too large dead properties")
        try:
            os.setxattr(fd, XATTR_NAME, raw)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.E2BIG, errno.EDQUOT):
                raise NoSpaceError("no room to store these dead properties") from exc
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise BackendError(
                    "this filesystem cannot store dead properties (no user extended attributes)"
                ) from exc
            raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
