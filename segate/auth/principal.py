"""Who is asking, and what their credential itself says they may do.

A Principal states facts. It never decides: ``authz.decide`` does.

* ``capabilities`` is set for capability credentials (a token with storage scopes): the token's
  scopes alone say what is allowed (WLCG profile §2.2.3). ``None`` means an identity credential,
  judged by the site's ``[[rules]]``.
* ``restrictions`` narrow whatever the capabilities or rules allow. Macaroons add one per
  credential; each must allow the operation (several ``path:`` caveats narrow, never widen).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from segate.paths import LogicalPath


class Kind(enum.StrEnum):
    ANONYMOUS = "anonymous"
    JWT = "jwt"
    MACAROON = "macaroon"
    X509 = "x509"


class Op(enum.StrEnum):
    """The operations a request performs on one path; the unit of every decision."""

    STAT = "stat"  # size, mtime, checksum, existence
    LIST = "list"  # directory listing (PROPFIND Depth 1 on a collection)
    READ = "read"  # file contents
    CREATE = "create"  # a new file where none exists (no overwrite)
    OVERWRITE = "overwrite"  # replace or truncate an existing file
    MKDIR = "mkdir"
    DELETE = "delete"
    MOVE_OUT = "move_out"  # rename away from this path (MOVE source)
    STAGE = "stage"  # bring online from nearline


class Permission(enum.StrEnum):
    """What a scope or a site rule grants, in the WLCG profile's words."""

    READ = "read"
    CREATE = "create"
    MODIFY = "modify"
    STAGE = "stage"


@dataclass(frozen=True, slots=True)
class Grant:
    """One capability: ``permission`` on ``path`` (and below); ``dir_only`` for a trailing ``/``."""

    permission: Permission
    path: LogicalPath
    dir_only: bool = False


class Activity(enum.StrEnum):
    """Macaroon activities (dCache / XRootD vocabulary, PROTOCOLS.md §3.3)."""

    DOWNLOAD = "DOWNLOAD"
    UPLOAD = "UPLOAD"
    DELETE = "DELETE"
    MANAGE = "MANAGE"
    LIST = "LIST"
    READ_METADATA = "READ_METADATA"
    UPDATE_METADATA = "UPDATE_METADATA"
    STAGE = "STAGE"


@dataclass(frozen=True, slots=True)
class Restriction:
    """A narrowing carried by a macaroon: only these activities, only below these paths.

    ``paths`` empty means no path limit. Several path caveats in one macaroon are all kept in
    ``paths`` and ALL must cover the request (intersection).
    """

    activities: frozenset[Activity]
    paths: tuple[LogicalPath, ...] = ()
    source: str = "macaroon"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Kind
    subject: str = ""
    issuer: str | None = None
    dn: str | None = None
    vo: str | None = None
    fqans: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    capabilities: tuple[Grant, ...] | None = None
    restrictions: tuple[Restriction, ...] = ()
    #: epoch seconds after which the credential is no longer valid (None: no expiry)
    expires_at: float | None = None
    limited_proxy: bool = False
    #: the credential kind behind a macaroon's minting identity ("jwt", "x509", ...)
    via: tuple[str, ...] = field(default=())

    @property
    def is_anonymous(self) -> bool:
        return self.kind is Kind.ANONYMOUS

    @property
    def is_capability(self) -> bool:
        return self.capabilities is not None

    def label(self) -> str:
        """Short identity for logs: never a credential."""
        if self.kind is Kind.ANONYMOUS:
            return "-"
        if self.dn:
            return self.dn
        if self.issuer:
            return f"{self.issuer}#{self.subject}"
        return self.subject or "-"


ANONYMOUS = Principal(kind=Kind.ANONYMOUS)
