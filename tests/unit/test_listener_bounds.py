"""The pure pieces of the listeners' bounds: the Host check against DNS rebinding, the
in-memory body budget, and the connection cap under the open-file limit."""

from __future__ import annotations

import asyncio
import resource

import pytest

from relay.listener import NOFILE_SHARE, connection_cap, host_allowed, is_loopback_host
from relay.sources.otlp_body import ByteBudget


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:4318", "localhost.", "127.0.0.1", "127.0.0.1:8788",
                                  "127.9.9.9:1", "[::1]", "[::1]:8788", "::1"])
def test_loopback_names_and_addresses_are_served(host: str) -> None:
    assert host_allowed(host, "127.0.0.1")


@pytest.mark.parametrize("host", [None, "", "evil.example", "evil.example:8788", "localhost.evil.example",
                                  "127.0.0.1.evil.example", "10.0.0.5:8788", "[2001:db8::1]:8788", "0.0.0.0"])
def test_other_names_are_refused_on_a_loopback_listener(host: str | None) -> None:
    assert not host_allowed(host, "127.0.0.1")


def test_the_configured_listen_address_is_served() -> None:
    assert host_allowed("relay.internal:8788", "relay.internal")
    assert host_allowed("10.0.0.5:8788", "10.0.0.5")
    assert not host_allowed("evil.example:8788", "10.0.0.5")


def test_a_wildcard_listener_serves_addresses_but_not_other_names() -> None:
    assert host_allowed("10.0.0.5:8788", "0.0.0.0")
    assert host_allowed("[2001:db8::1]:8788", "::")
    assert not host_allowed("evil.example:8788", "0.0.0.0")


def test_is_loopback_host() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("192.168.1.1") and not is_loopback_host("x")


def test_the_budget_holds_the_limit_but_lets_one_large_request_in_alone() -> None:
    budget = ByteBudget(100)
    assert budget.try_take(60) and budget.try_take(40)
    assert not budget.try_take(1)
    budget.give_back(100)
    assert budget.try_take(500), "alone, a request larger than the budget still passes"
    assert not budget.try_take(1)
    budget.give_back(500)
    assert budget.held == 0


def test_a_request_waits_for_room_and_gives_up_after_its_wait() -> None:
    async def main() -> tuple[bool, bool]:
        budget = ByteBudget(100)
        assert budget.try_take(100)
        asyncio.get_running_loop().call_later(0.05, budget.give_back, 100)
        got_room = await budget.take(80, wait=5.0)
        no_room = await budget.take(80, wait=0.05)
        return got_room, no_room

    assert asyncio.run(main()) == (True, False)


def test_the_connection_cap_stays_under_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10) == 10
    assert connection_cap(10**9) <= soft // NOFILE_SHARE
