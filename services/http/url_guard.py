"""SSRF protection: webhook and input URLs may reach only public addresses, unless the operator says otherwise.

Two policies share this code: webhook URLs (OFFHOURS_WEBHOOK_ALLOWLIST) and batch input URLs
(OFFHOURS_INPUT_URL_ALLOWLIST), each with its own allowlist, so opening one never opens the other.
A URL is checked when it is given (a clear 400 early) and again at every connection,
because DNS can change in between. At delivery the check lives *in the resolver* the HTTP client
connects with (`GuardedResolver`): the addresses that were checked are the addresses connected to,
so a host that answers a public address to the check and a private one to the connect (DNS
rebinding) gains nothing. Every address a name resolves to must pass, not just the first.

Refused unless allowlisted: loopback, private (RFC 1918, ULA), link-local, CGNAT (100.64/10),
multicast, reserved, unspecified and other non-global ranges, IPv4 embedded in IPv6 (mapped,
6to4, NAT64) judged as the IPv4 it carries — and cloud metadata addresses, which stay refused
even with `webhook_allow_private` unless the allowlist names them explicitly.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from schemas.text import cut
from services.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services: AWS/GCP/Azure/OpenStack/Oracle, AWS IPv6 and ECS, Alibaba Cloud.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Kinds that `webhook_allow_private` does not open up: never a sensible webhook target.
_ALWAYS_REFUSED = ("a cloud metadata address", "the unspecified address", "a multicast address")

ALLOWLIST_HINT = "an operator can allow it with OFFHOURS_WEBHOOK_ALLOWLIST"
INPUT_ALLOWLIST_HINT = "an operator can allow it with OFFHOURS_INPUT_URL_ALLOWLIST"


class URLRefused(Exception):
    """The URL may not be called (scheme, or an address the policy refuses). Not an OSError on
    purpose: aiohttp wraps OSErrors from the resolver as DNS failures, this must stay recognisable."""


def address_problem(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address, or None when it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(embedded)
            return None if inner is None else f"{inner} (embedded in IPv6 as {embedded})"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


@dataclass(frozen=True)
class URLPolicy:
    """What the operator allows beyond public addresses, for one kind of URL.

    `what` and `hint` word the refusals; a refusal names the kind of address, never the address
    or the name it resolved to (those would map the internal network for whoever asks).
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)
    allow_private: bool = False
    what: str = "webhook URLs"
    hint: str = ALLOWLIST_HINT

    @classmethod
    def from_settings(cls, settings: Settings) -> URLPolicy:
        """The webhook policy (webhook_allowlist, webhook_allow_private)."""
        return cls.parse(settings.webhook_allowlist, allow_private=settings.webhook_allow_private)

    @classmethod
    def for_inputs(cls, settings: Settings) -> URLPolicy:
        """The batch input URL policy (input_url_allowlist, input_url_allow_private)."""
        return cls.parse(settings.input_url_allowlist, allow_private=settings.input_url_allow_private,
                         what="input URLs", hint=INPUT_ALLOWLIST_HINT)

    @classmethod
    def parse(
        cls, allowlist: Iterable[str], *, allow_private: bool = False, what: str = "webhook URLs",
        hint: str = ALLOWLIST_HINT,
    ) -> URLPolicy:
        """Entries are CIDRs or single addresses ("10.0.0.0/8", "127.0.0.1", "::1") or host names."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in allowlist:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(_normal_host(entry))
        return cls(tuple(networks), frozenset(hosts), allow_private, what, hint)

    def host_allowed(self, host: str) -> bool:
        """True when the operator listed this host name: its addresses are then not judged."""
        return _normal_host(host) in self.hosts

    def refusal(self, ip: IPAddress) -> str | None:
        """Why the policy refuses to connect to `ip`, or None."""
        if any(ip.version == net.version and ip in net for net in self.networks):
            return None
        problem = address_problem(ip)
        if problem is None or (self.allow_private and not problem.startswith(_ALWAYS_REFUSED)):
            return None
        return problem


def _normal_host(host: str) -> str:
    return host.strip().rstrip(".").lower().strip("[]")


def _refused_message(policy: URLPolicy, *, literal: bool, problem: str) -> str:
    shown = "the URL's host" if literal else "the URL's host name resolves to an address that"
    return f"{shown} is {problem}; {policy.what} must point at public addresses ({policy.hint})"


def literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(_normal_host(host))
    except ValueError:
        return None


def check_literal(host: str, policy: URLPolicy) -> None:
    """Refuse a URL whose host is an IP literal the policy does not allow (the resolver never sees those)."""
    ip = literal_ip(host)
    if ip is not None and not policy.host_allowed(host):
        problem = policy.refusal(ip)
        if problem is not None:
            raise URLRefused(_refused_message(policy, literal=True, problem=problem))


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses the host if any address is not allowed.

    aiohttp connects only to the addresses its resolver returned, so a check here cannot be raced
    by a DNS answer that changes between the check and the connect.
    """

    def __init__(self, policy: URLPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self.policy.host_allowed(host):
            for result in results:
                ip = ipaddress.ip_address(result["host"])
                problem = self.policy.refusal(ip)
                if problem is not None:
                    raise URLRefused(_refused_message(self.policy, literal=False, problem=problem))
        return results

    async def close(self) -> None:
        await self._inner.close()


async def check_url(url: str, policy: URLPolicy, resolver: AbstractResolver | None = None) -> None:
    """Refuse `url` (URLRefused) unless it is http(s) and every address its host resolves to is allowed.

    A host that does not resolve raises URLRefused too: an endpoint nobody can reach is a mistake
    the caller should hear about now.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise URLRefused(f"{cut(url, 100)!r} is not an http(s) URL with a host")
    host = parts.hostname
    if literal_ip(host) is not None:
        check_literal(host, policy)
        return
    guarded = GuardedResolver(policy, resolver)
    try:
        await guarded.resolve(host, parts.port or (443 if parts.scheme == "https" else 80), socket.AF_UNSPEC)
    except OSError as exc:
        raise URLRefused(f"the URL's host name does not resolve: {_os_error(exc)}") from None
    finally:
        if resolver is None:
            await guarded.close()


def _os_error(exc: Any) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
