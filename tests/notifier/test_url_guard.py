"""The SSRF guard: which addresses a webhook may reach, and that the check sits in the resolver."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from services.http.url_guard import GuardedResolver, URLPolicy, URLRefused, address_problem, check_url
from services.settings import Settings

REFUSED = {
    "127.0.0.1": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fd12::1": "private",
    "169.254.1.1": "link-local",
    "fe80::1": "link-local",
    "100.64.0.1": "CGNAT",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "240.0.0.1": "reserved",
    "169.254.169.254": "metadata",
    "fd00:ec2::254": "metadata",
    "100.100.100.200": "metadata",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "2002:a00:1::": "private",  # 6to4 of 10.0.0.1
    "64:ff9b::c0a8:101": "private",  # NAT64 of 192.168.1.1
    "198.18.0.1": "private",  # benchmarking range
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "kind"), REFUSED.items())
def test_non_public_addresses_are_named(address: str, kind: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None and kind in problem


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def test_allowlist_and_allow_private() -> None:
    policy = URLPolicy.parse(["127.0.0.1/32", "10.0.0.0/8", "hooks.internal"])
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("10.9.9.9")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) is not None
    assert policy.host_allowed("HOOKS.internal.") and not policy.host_allowed("other.internal")
    dev = URLPolicy.parse([], allow_private=True)
    assert dev.refusal(ipaddress.ip_address("192.168.0.1")) is None
    assert dev.refusal(ipaddress.ip_address("127.0.0.1")) is None
    # metadata endpoints stay shut unless named explicitly
    assert "metadata" in (dev.refusal(ipaddress.ip_address("169.254.169.254")) or "")
    assert URLPolicy.parse(["169.254.169.254"]).refusal(ipaddress.ip_address("169.254.169.254")) is None


class FixedResolver(AbstractResolver):
    """Answers every name with the given addresses (a DNS server we control)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.calls = 0

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.calls += 1
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                          proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_every_resolved_address_must_pass() -> None:
    policy = URLPolicy()
    await check_url("https://example.test/hook", policy, FixedResolver("93.184.216.34"))
    with pytest.raises(URLRefused, match=r"resolves to an address that is a private address"):
        await check_url("https://example.test/hook", policy, FixedResolver("93.184.216.34", "10.0.0.5"))


async def test_literals_schemes_and_unresolvable_hosts() -> None:
    policy = URLPolicy()
    with pytest.raises(URLRefused, match=r"host is a loopback address"):
        await check_url("http://127.0.0.1:8080/x", policy)
    with pytest.raises(URLRefused, match="loopback"):
        await check_url("http://[::1]/x", policy)
    with pytest.raises(URLRefused, match="http"):
        await check_url("file:///etc/passwd", policy)
    with pytest.raises(URLRefused, match="does not resolve"):
        await check_url("http://no-such-host.invalid/x", policy)
    await check_url("http://127.0.0.1:8080/x", URLPolicy.parse(["127.0.0.1"]))


async def test_localhost_name_is_judged_by_its_addresses() -> None:
    with pytest.raises(URLRefused, match=r"host name resolves to .*loopback"):
        await check_url("http://localhost:9/x", URLPolicy())
    await check_url("http://localhost:9/x", URLPolicy.parse(["localhost"]))


async def test_guarded_resolver_checks_each_answer() -> None:
    """A name that resolves public on one lookup and private on the next (rebinding) is refused on the second:
    the answer checked is the answer connected to."""
    inner = FixedResolver("93.184.216.34")
    guarded = GuardedResolver(URLPolicy(), inner)
    assert (await guarded.resolve("rebind.test", 80))[0]["host"] == "93.184.216.34"
    inner.addresses = ("127.0.0.1",)
    with pytest.raises(URLRefused):
        await guarded.resolve("rebind.test", 80)
    assert inner.calls == 2


async def test_refusals_never_echo_the_address_or_name() -> None:
    """An error must not map the internal network: no resolved address, no internal name."""
    policy = URLPolicy.parse([])
    with pytest.raises(URLRefused) as refused:
        await check_url("http://localhost:9/x", policy)
    assert "127.0.0.1" not in str(refused.value) and "localhost" not in str(refused.value)


async def test_the_input_policy_has_its_own_allowlist_and_wording() -> None:
    settings = Settings(webhook_allowlist=["127.0.0.1/32"])
    inputs = URLPolicy.for_inputs(settings)
    with pytest.raises(URLRefused, match=r"input URLs must .*OFFHOURS_INPUT_URL_ALLOWLIST"):
        await check_url("http://127.0.0.1:9/x", inputs)
    await check_url("http://127.0.0.1:9/x", URLPolicy.for_inputs(Settings(input_url_allowlist=["127.0.0.1"])))
