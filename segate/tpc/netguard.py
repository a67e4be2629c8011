"""Which remote addresses a third-party copy may reach (server-side request forgery guard).

A COPY makes segate open a connection wherever the client says; without a guard any client
could probe or talk to services on the gateway's own host or site network. Rules
(PROTOCOLS.md §4.5: XRootD refuses local and, configurably, private addresses):

* Only ``http`` and ``https``.
* An address is refused unless it is globally routable: loopback, link-local, private
  (RFC 1918, ULA), shared (100.64/10), multicast, unspecified and reserved ranges are refused.
  IPv6 forms that embed an IPv4 address (``::ffff:a.b.c.d``, 6to4, Teredo, NAT64
  ``64:ff9b::/96``) are judged by the embedded address too.
* ``[tpc] allow_hosts`` lets named hosts (exact, case-insensitive), IP addresses or CIDR ranges
  through anyway (a testbed on localhost, a site-internal peer).
* The check runs on the first URL and on every redirect hop (engine), and again inside the
  DNS resolver the HTTP client connects through (:class:`GuardedResolver`): the client can only
  connect to an address that passed the guard, so a name that re-resolves to another address
  between check and connect (DNS rebinding) gains nothing. IP literals never reach a resolver
  and cannot change, so checking the URL suffices for them.
* A name that resolves to several addresses keeps only the permitted ones; it is refused when
  none is left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
SCHEMES = ("http", "https")


class RefusedRemote(OSError):
    """The remote URL or address is not allowed by policy (scheme or address)."""


class BadScheme(RefusedRemote):
    pass


class Unresolvable(OSError):
    pass


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """The address itself plus any IPv4 address an IPv6 form carries."""
    out: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            out.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            out.append(ip.sixtofour)
        if ip.teredo is not None:
            out.extend(ip.teredo)
        if ip in _NAT64:
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def address_class(ip: IPAddress) -> str | None:
    """Why an address is not a public one (``"loopback"``...), or None if it is."""
    for a in reversed(_embedded(ip)):  # an embedded IPv4 address names the better reason
        if a.is_unspecified:
            return "unspecified"
        if a.is_loopback:
            return "loopback"
        if a.is_link_local:
            return "link-local"
        if a.is_multicast:
            return "multicast"
        if a.is_private:
            return "private"
        if a.is_reserved:
            return "reserved"
        if not a.is_global:
            return "not globally routable"
    return None


@dataclass(frozen=True, slots=True)
class NetGuard:
    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_allow(cls, allow_hosts: Iterable[str]) -> NetGuard:
        names: set[str] = set()
        nets: list[IPNetwork] = []
        for entry in allow_hosts:
            e = entry.strip().strip("[]")
            try:
                nets.append(ipaddress.ip_network(e, strict=False))
            except ValueError:
                names.add(e.lower().rstrip("."))
        return cls(frozenset(names), tuple(nets))

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why connecting to ``ip`` (reached through ``host``) is refused, or None."""
        if host.lower().strip("[]").rstrip(".") in self.names:
            return None
        if any(ip in n for n in self.networks):
            return None
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if mapped is not None and any(mapped in n for n in self.networks):
            return None
        why = address_class(ip)
        return None if why is None else f"{why} address {ip} is not allowed for transfers"

    def check_url(self, url: URL) -> IPAddress | None:
        """Scheme and (for an IP literal) address checks. Returns the literal, if any."""
        if url.scheme not in SCHEMES:
            raise BadScheme(f"scheme {url.scheme[:10]!r} is not allowed (only http and https)")
        host = url.raw_host
        if not host:
            raise RefusedRemote("the remote URL has no host")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None
        why = self.refusal(host, ip)
        if why:
            raise RefusedRemote(why)
        return ip

    async def vet(self, url: URL) -> list[tuple[str, int]]:
        """Check a URL and resolve its host: the permitted (ip, port) pairs. Raises."""
        port = url.port or (443 if url.scheme == "https" else 80)
        literal = self.check_url(url)
        if literal is not None:
            return [(str(literal), port)]
        host = url.raw_host or ""
        return [(r["host"], r["port"]) for r in await self.resolve(host, port)]

    async def resolve(
        self, host: str, port: int, family: int = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise Unresolvable(f"cannot resolve host {host[:100]!r}: {exc.strerror}") from exc
        out: list[ResolveResult] = []
        reasons: list[str] = []
        seen: set[tuple[str, int]] = set()
        for fam, _, proto, _, sockaddr in infos:
            addr = str(sockaddr[0])
            if (addr, fam) in seen:
                continue
            seen.add((addr, fam))
            why = self.refusal(host, ipaddress.ip_address(addr.partition("%")[0]))
            if why:
                reasons.append(why)
                continue
            out.append(
                ResolveResult(
                    hostname=host,
                    host=addr,
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not out:
            raise RefusedRemote(
                f"{host[:100]}: {reasons[0]}" if reasons else f"no address for {host[:100]!r}"
            )
        return out


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that returns only addresses the guard permits."""

    def __init__(self, guard: NetGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await self.guard.resolve(host, port, family)

    async def close(self) -> None:
        return None
