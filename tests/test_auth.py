"""Tokens on their own (`TokenSource`), on a fake clock: when one is fetched, reused, renewed and
forgotten. The token request itself is the simulator's, in `test_procore_client.py`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from syncer.errors import ExitCode
from syncer.procore.auth import RENEW_BEFORE, AuthError, Token, TokenSource


class Endpoint:
    """A token endpoint's answers, numbered: `token-1`, `token-2`, ..."""

    def __init__(self, **answer: Any) -> None:
        self.answer = {"expires_in": 5400, **answer}
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0)
        return {"access_token": f"token-{self.calls}", **self.answer}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def source(endpoint: Endpoint, clock: Clock) -> TokenSource:
    return TokenSource(endpoint, clock=clock)


async def test_a_token_is_fetched_once_and_reused() -> None:
    endpoint, clock = Endpoint(), Clock()
    tokens = source(endpoint, clock)
    assert [await tokens.token() for _ in range(3)] == ["token-1"] * 3
    assert endpoint.calls == 1


async def test_a_token_is_renewed_five_minutes_before_it_expires() -> None:
    endpoint, clock = Endpoint(expires_in=5400), Clock()
    tokens = source(endpoint, clock)
    start = clock.now
    await tokens.token()
    clock.now = start + 5400 - RENEW_BEFORE - 0.5
    assert await tokens.token() == "token-1"
    clock.now = start + 5400 - RENEW_BEFORE
    assert await tokens.token() == "token-2"
    assert RENEW_BEFORE == 300.0


async def test_a_short_lived_token_is_renewed_at_half_its_life() -> None:
    endpoint, clock = Endpoint(expires_in=100), Clock()
    tokens = source(endpoint, clock)
    start = clock.now
    await tokens.token()
    clock.now = start + 49.9
    assert await tokens.token() == "token-1"
    clock.now = start + 50
    assert await tokens.token() == "token-2"


@pytest.mark.parametrize("expires_in", [None, "5400", [5400]])
async def test_a_lifetime_that_is_missing_or_not_a_number_counts_as_an_hour(expires_in: Any) -> None:
    endpoint, clock = Endpoint(expires_in=expires_in), Clock()
    tokens = source(endpoint, clock)
    start = clock.now
    await tokens.token()
    clock.now = start + 3600 - RENEW_BEFORE - 0.5
    assert await tokens.token() == "token-1"
    clock.now = start + 3600 - RENEW_BEFORE
    assert await tokens.token() == "token-2"


async def test_a_fractional_lifetime_is_taken_as_it_is() -> None:
    endpoint, clock = Endpoint(expires_in=1000.5), Clock()
    tokens = source(endpoint, clock)
    start = clock.now
    await tokens.token()
    clock.now = start + 1000.5 - RENEW_BEFORE - 0.25
    assert await tokens.token() == "token-1"


@pytest.mark.parametrize("value", [None, "", 12345])
async def test_an_answer_without_a_usable_token_is_an_auth_error(value: Any) -> None:
    async def answer() -> dict[str, Any]:
        return {"access_token": value, "expires_in": 5400}

    with pytest.raises(AuthError, match=r"^the token endpoint answered without an access_token$") as caught:
        await TokenSource(answer, clock=Clock()).token()
    assert caught.value.exit_code == ExitCode.AUTH == 3


async def test_a_token_proven_dead_is_fetched_again() -> None:
    endpoint, clock = Endpoint(), Clock()
    tokens = source(endpoint, clock)
    dead = await tokens.token()
    tokens.invalidate(dead)
    assert await tokens.token() == "token-2"


async def test_forgetting_a_token_already_replaced_keeps_the_new_one() -> None:
    endpoint, clock = Endpoint(), Clock()
    tokens = source(endpoint, clock)
    old = await tokens.token()
    tokens.invalidate(old)
    await tokens.token()
    tokens.invalidate(old)  # a second request that used the old token got its 401 late
    assert await tokens.token() == "token-2"
    assert endpoint.calls == 2


async def test_concurrent_callers_share_one_token_request() -> None:
    endpoint, clock = Endpoint(), Clock()
    tokens = source(endpoint, clock)
    got = await asyncio.gather(*(tokens.token() for _ in range(10)))
    assert set(got) == {"token-1"} and endpoint.calls == 1


async def test_each_new_token_is_handed_to_the_log_redactor() -> None:
    endpoint, clock = Endpoint(), Clock()
    tokens = source(endpoint, clock)
    learned: list[str] = []
    tokens.on_new_token = learned.append
    first = await tokens.token()
    await tokens.token()
    tokens.invalidate(first)
    await tokens.token()
    assert learned == ["token-1", "token-2"]


def test_a_tokens_repr_does_not_show_it() -> None:
    assert repr(Token("secret-value", renew_at=1000.4)) == "Token(renew_at=1000)"


@pytest.mark.parametrize("expires_in", [0, -30, 0.0])
async def test_a_lifetime_of_zero_or_less_counts_as_a_minute(expires_in: Any) -> None:
    endpoint, clock = Endpoint(expires_in=expires_in), Clock()
    tokens = source(endpoint, clock)
    start = clock.now
    assert [await tokens.token() for _ in range(5)] == ["token-1"] * 5, "not a token request per call"
    clock.now = start + 29.9
    assert await tokens.token() == "token-1"
    clock.now = start + 30
    assert await tokens.token() == "token-2"


async def test_a_lifetime_under_a_second_counts_as_a_second() -> None:
    endpoint, clock = Endpoint(expires_in=0.001), Clock()
    tokens = source(endpoint, clock)
    start = clock.now
    assert [await tokens.token() for _ in range(5)] == ["token-1"] * 5
    clock.now = start + 0.5
    assert await tokens.token() == "token-2"


@pytest.mark.parametrize("expires_in", [float("inf"), float("nan")])
async def test_a_lifetime_that_is_not_finite_counts_as_an_hour(expires_in: float) -> None:
    endpoint, clock = Endpoint(expires_in=expires_in), Clock()
    tokens = source(endpoint, clock)
    start = clock.now
    await tokens.token()
    clock.now = start + 3600 - RENEW_BEFORE
    assert await tokens.token() == "token-2"


@pytest.mark.parametrize("value", ["abc\r\nX-Injected: 1", "two words", "t\u00f6ken", "x" * 4097])
async def test_a_token_that_cannot_go_in_a_header_is_an_auth_error(value: str) -> None:
    async def answer() -> dict[str, Any]:
        return {"access_token": value, "expires_in": 5400}

    with pytest.raises(
        AuthError, match=r"^the token endpoint answered with an access_token that cannot go in a "
    ):
        await TokenSource(answer, clock=Clock()).token()
