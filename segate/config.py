"""Configuration: TOML in, frozen dataclasses out; loaded and validated once.

Every problem is reported with its key name (``tokens.issuers[0].profile: ...``) and all
problems are collected, so ``segate check-config`` can print them together. Relative file paths
are resolved against the config file's folder. The README documents every key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segate.auth.principal import Permission
from segate.authz.policy import Rule, valid_who
from segate.paths import LogicalPath, PathError

WLCG_ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    cert: Path | None = None
    key: Path | None = None
    ca_dir: Path | None = None
    workers: int = 1
    #: extra host names (and host:port) that mean "this server" in Destination/Source URLs
    aliases: tuple[str, ...] = ()
    #: public base URL used in macaroon answers; default https://<listen>
    public_url: str | None = None
    log_format: str = "text"  # "text" or "json"
    max_header_size: int = 16384
    max_body_xml: int = 1 << 20  # PROPFIND / JSON bodies
    drain_timeout: float = 30.0
    #: concurrent connections from one client address; more get 429 (0 = no limit)
    max_connections_per_client: int = 256
    #: entries one Depth-1 PROPFIND may list; a bigger folder gets 507 (bounded response size)
    max_propfind_entries: int = 100000
    #: HEAD and PROPFIND Depth 0 served by segate's own HTTP front (segate.web.lane)
    fast_lane: bool = True

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("127.0.0.1", "0.0.0.0", "[::]", "[::1]"):
            host = "localhost"
        return f"https://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    root: Path = Path("segate-data")
    create_parents: bool = True
    #: DELETE of a non-empty collection without ``Depth: infinity``: False -> 409 (POSIX
    #: rmdir, what gfal2 and XRootD expect); True -> the whole tree (RFC 4918 §9.6.1)
    recursive_delete: bool = False
    io_chunk: int = 4 << 20
    #: stat/open/xattr reads on the event loop (fast on a local filesystem); false puts them in
    #: the executor, for filesystems where a stat can block (NFS, FUSE)
    metadata_in_loop: bool = True


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    base_paths: tuple[LogicalPath, ...] = (LogicalPath(),)
    profile: str = "wlcg"  # "wlcg" or "scitokens"
    jwks_file: Path | None = None
    #: accept "https://wlcg.cern.ch/jwt/v1/any" (and SciTokens 2.0 "ANY") from this issuer
    accept_any_audience: bool | None = None


@dataclass(frozen=True, slots=True)
class TokensConfig:
    audiences: tuple[str, ...] = ()
    accept_any_audience: bool = True
    leeway: int = 60
    issuers: tuple[IssuerConfig, ...] = ()
    allow_query_token: bool = True
    stage_implies_read: bool = True
    cache_size: int = 10000
    jwks_refresh: float = 6 * 3600.0
    jwks_min_refetch: float = 60.0
    jwks_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MacaroonsConfig:
    secret_file: Path | None = None
    previous_secret_files: tuple[Path, ...] = ()
    max_validity: float = 86400.0
    location: str = "segate"


@dataclass(frozen=True, slots=True)
class X509Config:
    vomsdir: Path | None = None
    dn_map: Path | None = None
    allow_limited_proxies: bool = True


@dataclass(frozen=True, slots=True)
class TpcConfig:
    marker_interval: float = 5.0
    max_active: int = 64
    connect_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_redirects: int = 5
    #: hosts (names, IPs or CIDRs) a transfer may reach even if loopback/private
    allow_hosts: tuple[str, ...] = ()
    #: re-send forwarded credentials after a redirect to another host
    forward_credentials_across_hosts: bool = False
    max_streams: int = 16


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    rules: tuple[Rule, ...] = ()
    macaroons: MacaroonsConfig = field(default_factory=MacaroonsConfig)
    x509: X509Config = field(default_factory=X509Config)
    tpc: TpcConfig = field(default_factory=TpcConfig)
    source: Path | None = None


# --------------------------------------------------------------------------------------------
class _Reader:
    """Typed access to a TOML table that records problems instead of raising at once."""

    def __init__(self, data: dict[str, Any], prefix: str, problems: list[str], base: Path):
        self.data = data
        self.prefix = prefix
        self.problems = problems
        self.base = base
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def bad(self, name: str, msg: str) -> None:
        self.problems.append(f"{self.key(name)}: {msg}")

    def get(self, name: str, typ: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        v = self.data[name]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, bool) and typ is not bool and typ != (bool,):
            self.bad(name, f"expected {_tname(typ)}, got a boolean")
            return default
        if not isinstance(v, typ):
            self.bad(name, f"expected {_tname(typ)}, got {type(v).__name__}")
            return default
        return v

    def path(self, name: str, default: Path | None) -> Path | None:
        v = self.get(name, str, None)
        if v is None:
            return default
        p = Path(os.path.expanduser(v))
        return p if p.is_absolute() else (self.base / p)

    def strlist(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self.get(name, list, None)
        if v is None:
            return default
        if not all(isinstance(x, str) for x in v):
            self.bad(name, "expected a list of strings")
            return default
        return tuple(v)

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        v = self.get(name, float, default)
        if v < minimum:
            self.bad(name, f"must be >= {minimum:g}")
            return default
        return float(v)

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        v = self.get(name, int, default)
        if v < minimum:
            self.bad(name, f"must be >= {minimum}")
            return default
        return int(v)

    def table(self, name: str) -> dict[str, Any]:
        v = self.get(name, dict, {})
        return v if isinstance(v, dict) else {}

    def finish(self) -> None:
        for k in self.data:
            if k not in self.seen:
                self.problems.append(f"{self.key(k)}: unknown key")


def _tname(typ: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false"}
    names.update({list: "a list", dict: "a table"})
    if isinstance(typ, tuple):
        return " or ".join(names.get(t, t.__name__) for t in typ)
    return names.get(typ, typ.__name__)


def _logical(r: _Reader, name: str, raw: str) -> LogicalPath | None:
    if not raw.startswith("/"):
        r.bad(name, f"{raw!r} must be an absolute path")
        return None
    try:
        return LogicalPath.from_plain(raw)
    except PathError as exc:
        r.bad(name, f"{raw!r}: {exc}")
        return None


def _server(r: _Reader) -> ServerConfig:
    d = ServerConfig()
    listen = r.get("listen", str, d.listen)
    host, port = d.host, d.port
    h, sep, p = listen.rpartition(":")
    if not sep or not p.isdigit() or not (0 < int(p) < 65536) or not h:
        r.bad("listen", f"{listen!r} is not host:port")
    else:
        host, port = h.strip("[]"), int(p)
    fmt = r.get("log_format", str, d.log_format)
    if fmt not in ("text", "json"):
        r.bad("log_format", "must be 'text' or 'json'")
        fmt = d.log_format
    s = ServerConfig(
        host=host,
        port=port,
        cert=r.path("cert", None),
        key=r.path("key", None),
        ca_dir=r.path("ca_dir", None),
        workers=r.integer("workers", 1, minimum=1),
        aliases=r.strlist("aliases", ()),
        public_url=r.get("public_url", str, None),
        log_format=fmt,
        max_header_size=r.integer("max_header_size", d.max_header_size, minimum=1024),
        max_body_xml=r.integer("max_body_xml", d.max_body_xml, minimum=1024),
        drain_timeout=r.number("drain_timeout", d.drain_timeout),
        fast_lane=r.get("fast_lane", bool, d.fast_lane),
        max_connections_per_client=r.integer(
            "max_connections_per_client", d.max_connections_per_client
        ),
        max_propfind_entries=r.integer("max_propfind_entries", d.max_propfind_entries, minimum=1),
    )
    if (s.cert is None) != (s.key is None):
        r.bad("cert", "cert and key must be given together")
    r.finish()
    return s


def _storage(r: _Reader) -> StorageConfig:
    d = StorageConfig()
    root = r.path("root", None)
    if root is None:
        r.bad("root", "is required")
        root = d.root
    s = StorageConfig(
        root=root,
        create_parents=r.get("create_parents", bool, d.create_parents),
        recursive_delete=r.get("recursive_delete", bool, d.recursive_delete),
        io_chunk=r.integer("io_chunk", d.io_chunk, minimum=4096),
        metadata_in_loop=r.get("metadata_in_loop", bool, d.metadata_in_loop),
    )
    r.finish()
    return s


def _issuer(r: _Reader) -> IssuerConfig | None:
    iss = r.get("issuer", str, "")
    if not iss:
        r.bad("issuer", "is required")
    elif not iss.startswith("https://"):
        r.bad("issuer", f"{iss!r} must be an https URL")
    raw_bp = r.get("base_path", (str, list), "/")
    raw_list = [raw_bp] if isinstance(raw_bp, str) else raw_bp
    bases = []
    for b in raw_list:
        if not isinstance(b, str):
            r.bad("base_path", "expected a string or a list of strings")
            continue
        for part in b.split(","):
            lp = _logical(r, "base_path", part.strip())
            if lp is not None:
                bases.append(lp)
    profile = r.get("profile", str, "wlcg")
    if profile not in ("wlcg", "scitokens"):
        r.bad("profile", f"{profile!r} must be 'wlcg' or 'scitokens'")
    any_aud = r.get("accept_any_audience", bool, None)
    jwks_file = r.path("jwks_file", None)
    r.finish()
    if not iss:
        return None
    return IssuerConfig(
        issuer=iss,
        base_paths=tuple(bases) or (LogicalPath(),),
        profile=profile,
        jwks_file=jwks_file,
        accept_any_audience=any_aud,
    )


def _tokens(r: _Reader) -> TokensConfig:
    d = TokensConfig()
    raw_issuers = r.get("issuers", list, [])
    issuers: list[IssuerConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_issuers):
        if not isinstance(item, dict):
            r.bad(f"issuers[{i}]", "expected a table")
            continue
        ic = _issuer(_Reader(item, r.key(f"issuers[{i}]"), r.problems, r.base))
        if ic is None:
            continue
        if ic.issuer in seen:
            r.bad(f"issuers[{i}].issuer", f"{ic.issuer!r} is configured twice")
        seen.add(ic.issuer)
        issuers.append(ic)
    t = TokensConfig(
        audiences=r.strlist("audiences", ()),
        accept_any_audience=r.get("accept_any_audience", bool, d.accept_any_audience),
        leeway=r.integer("leeway", d.leeway),
        issuers=tuple(issuers),
        allow_query_token=r.get("allow_query_token", bool, d.allow_query_token),
        stage_implies_read=r.get("stage_implies_read", bool, d.stage_implies_read),
        cache_size=r.integer("cache_size", d.cache_size, minimum=0),
        jwks_refresh=r.number("jwks_refresh", d.jwks_refresh, minimum=1),
        jwks_min_refetch=r.number("jwks_min_refetch", d.jwks_min_refetch),
        jwks_timeout=r.number("jwks_timeout", d.jwks_timeout, minimum=0.1),
    )
    r.finish()
    return t


def _rules(items: list[Any], problems: list[str], base: Path) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    perms = {p.value for p in Permission}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"rules[{i}]: expected a table")
            continue
        r = _Reader(item, f"rules[{i}]", problems, base)
        raw_path = r.get("path", str, "")
        path = _logical(r, "path", raw_path) if raw_path else None
        if not raw_path:
            r.bad("path", "is required")
        allow = r.strlist("allow", ())
        for a in allow:
            if a not in perms:
                r.bad("allow", f"{a!r} is not one of {', '.join(sorted(perms))}")
        who = r.strlist("who", ())
        if not who:
            r.bad("who", "is required (e.g. ['anonymous'] or ['group:/vo'])")
        for w in who:
            if not valid_who(w):
                r.bad("who", f"{w!r} is not a known principal form")
        r.finish()
        if path is not None:
            rules.append(
                Rule(
                    path=path,
                    allow=frozenset(Permission(a) for a in allow if a in perms),
                    who=who,
                )
            )
    return tuple(rules)


def _macaroons(r: _Reader) -> MacaroonsConfig:
    d = MacaroonsConfig()
    prev = r.strlist("previous_secret_files", ())
    m = MacaroonsConfig(
        secret_file=r.path("secret_file", None),
        previous_secret_files=tuple(
            (p if p.is_absolute() else r.base / p) for p in (Path(x) for x in prev)
        ),
        max_validity=r.number("max_validity", d.max_validity, minimum=1),
        location=r.get("location", str, d.location),
    )
    r.finish()
    return m


def _x509(r: _Reader) -> X509Config:
    x = X509Config(
        vomsdir=r.path("vomsdir", None),
        dn_map=r.path("dn_map", None),
        allow_limited_proxies=r.get("allow_limited_proxies", bool, True),
    )
    r.finish()
    return x


def _tpc(r: _Reader) -> TpcConfig:
    d = TpcConfig()
    allow = r.strlist("allow_hosts", ())
    for h in allow:
        if "/" in h:
            try:
                ipaddress.ip_network(h, strict=False)
            except ValueError:
                r.bad("allow_hosts", f"{h!r} is not a valid CIDR")
    t = TpcConfig(
        marker_interval=r.number("marker_interval", d.marker_interval, minimum=0.05),
        max_active=r.integer("max_active", d.max_active, minimum=1),
        connect_timeout=r.number("connect_timeout", d.connect_timeout, minimum=0.1),
        idle_timeout=r.number("idle_timeout", d.idle_timeout, minimum=0.1),
        max_redirects=r.integer("max_redirects", d.max_redirects),
        allow_hosts=allow,
        forward_credentials_across_hosts=r.get(
            "forward_credentials_across_hosts", bool, d.forward_credentials_across_hosts
        ),
        max_streams=r.integer("max_streams", d.max_streams, minimum=1),
    )
    r.finish()
    return t


def settings_from_dict(data: dict[str, Any], base: Path, source: Path | None = None) -> Settings:
    problems: list[str] = []
    top = _Reader(data, "", problems, base)

    def section(name: str) -> _Reader:
        return _Reader(top.table(name), name, problems, base)

    server = _server(section("server"))
    storage = _storage(section("storage")) if "storage" in data else None
    if storage is None:
        problems.append("storage.root: is required")
        storage = StorageConfig()
    tokens = _tokens(section("tokens"))
    rules = _rules(top.get("rules", list, []), problems, base)
    macaroons = _macaroons(section("macaroons"))
    x509 = _x509(section("x509"))
    tpc = _tpc(section("tpc"))
    top.finish()
    if problems:
        raise ConfigError(problems)
    return Settings(
        server=server,
        storage=storage,
        tokens=tokens,
        rules=rules,
        macaroons=macaroons,
        x509=x509,
        tpc=tpc,
        source=source,
    )


def load_settings(path: Path) -> Settings:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from exc
    return settings_from_dict(data, path.resolve().parent, source=path)


def _key_mismatch(cert: Path, key: Path) -> bool:
    """True if both files parse and the key's public half is not the certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        pub = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
        priv = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pub.public_bytes(*fmt) != priv.public_key().public_bytes(*fmt)


def _cert_key_problems(cert: Path, key: Path) -> list[str]:
    """Load the pair as the server will: an unreadable file, a file that is not PEM or a key
    that does not match the certificate is found by ``check-config``, not at first start."""
    import ssl

    for name, p in (("server.cert", cert), ("server.key", key)):
        try:
            with p.open("rb"):
                pass
        except OSError as exc:
            return [f"{name}: {p} cannot be read ({exc.strerror})"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        if _key_mismatch(cert, key):
            return [f"server.key: {key} does not match the certificate {cert}"]
        why = getattr(exc, "reason", None) or exc.strerror or str(exc)
        return [f"server.cert/server.key: cannot load {cert} with {key} ({why})"]
    return []


def file_problems(s: Settings) -> list[str]:
    """Checks that need the filesystem (run by ``check-config`` and at start-up)."""
    out: list[str] = []

    def need(key: str, p: Path | None, *, is_dir: bool = False) -> None:
        if p is None:
            return
        ok = p.is_dir() if is_dir else p.is_file()
        if not ok:
            out.append(f"{key}: {p} does not exist or is not a {'folder' if is_dir else 'file'}")

    need("server.cert", s.server.cert)
    need("server.key", s.server.key)
    need("server.ca_dir", s.server.ca_dir, is_dir=True)
    for i, iss in enumerate(s.tokens.issuers):
        need(f"tokens.issuers[{i}].jwks_file", iss.jwks_file)
    need("x509.vomsdir", s.x509.vomsdir, is_dir=True)
    need("x509.dn_map", s.x509.dn_map)
    secret = s.macaroons.secret_file
    if secret is not None and not secret.exists() and not secret.parent.is_dir():
        out.append(f"macaroons.secret_file: folder {secret.parent} does not exist")
    for i, p in enumerate(s.macaroons.previous_secret_files):
        need(f"macaroons.previous_secret_files[{i}]", p)
    if s.server.cert is None:
        out.append("server.cert: is required (segate serves HTTPS only)")
    elif s.server.key is not None and s.server.cert.is_file() and s.server.key.is_file():
        out.extend(_cert_key_problems(s.server.cert, s.server.key))
    if not s.storage.root.parent.is_dir():
        out.append(f"storage.root: parent folder of {s.storage.root} does not exist")
    return out
