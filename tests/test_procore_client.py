"""The Procore client against the simulator: auth, pacing, retries, pagination, odd bodies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from syncer.procore.api import ProcoreApi
from syncer.procore.auth import AuthError
from syncer.procore.http import (
    EXCERPT_CHARS,
    TALLY,
    Answer,
    ProcoreError,
    ProcoreHttp,
    RetryPolicy,
    Tally,
    TransientError,
    describe_status,
    excerpt,
)
from syncer.procore.pacing import Pacer
from syncer.procore.query import ImageQuery
from syncer.simulator import Simulator
from tests.conftest import DOCUMENTED_LIMITS

FAST = RetryPolicy(attempts=8, base_delay=0.01, max_delay=0.05)
OTHER_HOST = "localhost"
"""Loopback by a name that is not the API's (`127.0.0.1`): a server under it is another host, an
object store or a stranger, which the token must never reach."""


@asynccontextmanager
async def client(sim: Simulator, **overrides: Any) -> AsyncIterator[ProcoreApi]:
    options: dict[str, Any] = {
        "api_base": sim.api_base,
        "login_base": sim.api_base,
        "company_id": sim.company.id,
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "retry": FAST,
        **overrides,
    }
    async with aiohttp.ClientSession() as session:
        yield ProcoreApi(ProcoreHttp(session, **options), company_id=options["company_id"])


async def test_projects_are_listed_across_pages_trusting_per_page(make_sim: Any) -> None:
    sim = await make_sim(projects=5, max_per_page=2)
    async with client(sim) as api:
        projects = await api.projects()
    assert sorted(p.id for p in projects) == sorted(sim.company.projects)
    assert sim.stats.requests["projects"] == 3


async def test_ids_only_lists_every_id(make_sim: Any) -> None:
    sim = await make_sim(photos=90, projects=1, max_per_page=40)
    project = next(iter(sim.company.projects))
    async with client(sim) as api:
        pages = [await api.ids_page(ImageQuery(project_id=project), page=n, per_page=100) for n in (1, 2, 3)]
    assert sorted(i for page in pages for i in page.items) == sorted(sim.company.photos)
    assert [page.total for page in pages] == [90, 90, 90]
    assert [page.per_page for page in pages] == [40, 40, 40]


async def test_pacing_from_headers_avoids_429(make_sim: Any) -> None:
    sim = await make_sim(**DOCUMENTED_LIMITS)
    async with client(sim) as api:
        started = time.monotonic()
        await asyncio.gather(*(api.projects() for _ in range(30)))
        elapsed = time.monotonic() - started
    assert sim.stats.rate_limited == 0
    assert elapsed >= 9.0, "30 requests at 25 in 10 s cannot finish inside one window"


async def test_429_is_waited_out_and_every_call_succeeds(make_sim: Any) -> None:
    sim = await make_sim(**DOCUMENTED_LIMITS)
    async with client(sim) as other:  # another integration of the company spends the window
        for _ in range(DOCUMENTED_LIMITS["spike_limit"]):
            await other.projects()
    async with client(sim) as api:
        results = await asyncio.gather(*(api.projects() for _ in range(3)))
    assert all(len(r) == len(sim.company.projects) for r in results)
    assert sim.stats.rate_limited > 0


async def test_server_errors_are_retried(make_sim: Any) -> None:
    sim = await make_sim(error_rate=0.3)
    async with client(sim) as api:
        for _ in range(10):
            assert len(await api.projects()) == len(sim.company.projects)


async def test_retries_are_bounded(make_sim: Any) -> None:
    sim = await make_sim(error_rate=1.0, retry_after=0.01)
    async with client(sim, retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01)) as api:
        with pytest.raises(ProcoreError, match=r"HTTP 50\d.*gave up after 3 attempts"):
            await api.projects()


async def test_broken_json_is_reported_with_an_excerpt(make_sim: Any) -> None:
    sim = await make_sim(broken_json_rate=1.0)
    async with client(sim, retry=RetryPolicy(attempts=2, base_delay=0.01)) as api:
        with pytest.raises(ProcoreError, match="answer is not JSON"):
            await api.projects()


async def test_revoked_token_is_renewed_once(sim: Simulator) -> None:
    async with client(sim) as api:
        await api.projects()
        sim.tokens.clear()  # revoked upstream
        await api.projects()
    assert sim.stats.tokens_issued == 2


async def test_wrong_credentials_raise_auth_error_without_the_secret(sim: Simulator) -> None:
    async with client(sim, client_secret="wrong-secret-value") as api:
        with pytest.raises(AuthError) as info:
            await api.projects()
    assert "Client authentication failed" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)


async def test_wrong_company_is_an_error_with_procores_message(sim: Simulator) -> None:
    async with client(sim, company_id=1) as api:
        with pytest.raises(ProcoreError, match="HTTP 403: You do not have access"):
            await api.projects()


async def test_one_photo_has_a_freshly_signed_url(sim: Simulator) -> None:
    photo_id, sim_photo = next(iter(sim.company.photos.items()))
    async with client(sim) as api:
        photo = await api.image(sim_photo.project_id, photo_id)
    assert photo.id == photo_id
    assert photo.url and "sig=" in photo.url
    assert "sig=" not in str(photo.raw)


def bare_http(api_base: str) -> ProcoreHttp:
    """A client that is never used to send: for what it decides alone."""
    return ProcoreHttp(
        None,  # type: ignore[arg-type]
        api_base=api_base,
        login_base="x",
        company_id=1,
        client_id="a",
        client_secret="b",
    )


TOKEN_HOSTS = {
    "https://api.procore.com": [
        ("https://api.procore.com/rest/v1.0/me", True),
        ("https://api.procore.com:8443/x", True),
        ("https://storage.procore.com/api/v5/files/us-east-1/pro-core.com/companies/1/01J", True),
        ("https://procore.com/x", True),
        ("https://APP.Procore.COM/x", True),
        ("https://app.procore.com./x", True),
        ("http://api.procore.com/x", False),
        ("http://storage.procore.com/x", False),
        ("https://storage.procoregov.com/x", False),
        ("https://evilprocore.com/x", False),
        ("https://procore.com.evil.example/x", False),
        ("https://bucket.s3.amazonaws.com/x", False),
    ],
    "https://api.procoregov.com": [
        ("https://storage.procoregov.com/api/v5/files/us-east-1/pro-core.com/companies/1/01J", True),
        ("https://login.procoregov.com/oauth/token", True),
        ("https://procoregov.com/x", True),
        ("https://STORAGE.ProcoreGov.COM./x", True),
        ("http://storage.procoregov.com/x", False),
        ("https://storage.procore.com/x", False),
        ("https://procore.com/x", False),
        ("https://procoregov.com.evil.test/x", False),
        ("https://evilprocoregov.com/x", False),
        ("https://bucket.s3.us-gov-west-1.amazonaws.com/x", False),
    ],
    "http://127.0.0.1:9000": [
        ("http://127.0.0.1:9000/rest/v1.0/me", True),
        ("http://127.0.0.1:9001/api/v5/files/x", True),
        ("https://127.0.0.1:9000/x", False),
        ("http://localhost:9001/x", False),
        ("https://storage.procore.com/x", False),
    ],
    "https://127.0.0.1:9000": [
        ("https://127.0.0.1:9001/x", True),
        ("http://127.0.0.1:9001/x", False),
    ],
}


@pytest.mark.parametrize(
    ("api_base", "url", "trusted"),
    [(base, url, trusted) for base, cases in TOKEN_HOSTS.items() for url, trusted in cases],
)
def test_the_token_goes_to_the_apis_host_and_https_hosts_of_its_procore_domain_only(
    api_base: str, url: str, trusted: bool
) -> None:
    """The domain is the API's: `procore.com`, or `procoregov.com` in the US government zone."""
    assert bare_http(api_base).may_carry_token(URL(url)) is trusted


def test_pagination_links_off_the_api_origin_are_refused() -> None:
    http = bare_http("https://api.procore.com")
    answer = Answer(data=[{"id": 1}], headers={"Link": '<https://evil.example/rest?page=2>; rel="next"'})
    with pytest.raises(ProcoreError, match="leaves the API origin"):
        ProcoreApi(http, company_id=1)._page_of(
            answer, URL("https://api.procore.com/rest/v1.0/projects"), "listing"
        )


@asynccontextmanager
async def scripted(
    *answers: web.Response, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[str, list[tuple[float, dict[str, str]]]]]:
    """A server on loopback that gives `answers` in turn (the last one again after that); yields
    its base URL (naming `host`) and, for each request it got, the time and the headers."""
    seen: list[tuple[float, dict[str, str]]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((time.monotonic(), dict(request.headers)))
        template = answers[min(len(seen), len(answers)) - 1]
        headers = {k: v for k, v in template.headers.items() if k.lower() != "content-length"}
        return web.Response(status=template.status, text=template.text, headers=headers)

    async with serving(handle, host=host) as base:
        yield base, seen


@asynccontextmanager
async def serving(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]], *, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """A server on loopback that answers every request with `handle`; yields its base URL, which
    names it `host` (`OTHER_HOST` for another host than the API's)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_429_waits_as_long_as_retry_after_says(sim: Simulator) -> None:
    refused = web.Response(status=429, text="Rate limit exceeded", headers={"Retry-After": "1"})
    fine = web.json_response([])
    async with scripted(refused, fine) as (base, seen), client(sim, api_base=base) as api:
        await api.projects()
    (first, _), (second, _) = seen
    assert second - first >= 1.0, f"retried after {second - first:.2f} s, not the 1 s Procore asked for"


async def test_the_token_is_refused_to_any_origin_but_procores_on_every_call(sim: Simulator) -> None:
    async with scripted(web.json_response([]), host=OTHER_HOST) as (foreign, seen), client(sim) as api:
        with pytest.raises(ProcoreError, match="refusing to send the token"):
            await api.http.get_json(URL(f"{foreign}/rest/v1.0/projects"), what="a forged URL")
        with pytest.raises(ProcoreError, match="refusing to send the token"):
            await api.http.open(URL(f"{foreign}/storage/1"), what="a forged file URL")
    assert seen == [], "nothing was sent there"


async def test_a_429_waits_for_retry_after_even_when_the_rate_headers_say_sooner(sim: Simulator) -> None:
    soon = str(int(time.time()))  # the window resets now, says the header
    refused = web.Response(
        status=429,
        text="Rate limit exceeded",
        headers={
            "Retry-After": "2",
            "X-Rate-Limit-Limit": "25",
            "X-Rate-Limit-Remaining": "0",
            "X-Rate-Limit-Reset": soon,
        },
    )
    async with scripted(refused, web.json_response([])) as (base, seen), client(sim, api_base=base) as api:
        await api.projects()
    (first, _), (second, _) = seen
    assert second - first >= 2.0, f"retried after {second - first:.2f} s; Retry-After said 2 s"


async def test_a_burst_of_401s_on_one_revoked_token_renews_it_once(sim: Simulator) -> None:
    async with client(sim) as api:
        await api.projects()
        sim.tokens.clear()  # revoked upstream while six requests are under way
        results = await asyncio.gather(*(api.projects() for _ in range(6)))
    assert all(len(r) == len(sim.company.projects) for r in results)
    assert sim.stats.tokens_issued == 2, "one renewal for the whole burst"


async def test_a_single_attempt_told_to_wait_says_how_long_to_its_caller(sim: Simulator) -> None:
    busy = web.Response(status=503, text="busy", headers={"Retry-After": "7"})
    async with scripted(busy) as (base, _), client(sim, api_base=base) as api:
        with pytest.raises(TransientError) as info:
            await api.http.open(URL(f"{base}/storage/1"), what="a file")
    assert info.value.wait == 7.0 and info.value.status == 503


# -- what an error says, and how long a retry waits ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b'{"errors": "Forbidden"}', "Forbidden"),
        (b'{"message": "Try later", "errors": "first"}', "first"),
        (b'{"message": "Try later"}', "Try later"),
        (b'{"error_description": "bad client", "error": "invalid_client"}', "bad client"),
        (b'{"error": "invalid_client"}', "invalid_client"),
        (b'{"errors": {"id": ["is invalid"]}}', '{"id": ["is invalid"]}'),
        (b'{"other": 1}', '{"other": 1}'),
        (b"<html>\n  <body>Bad   gateway</body>\n</html>", "Bad gateway"),
        (b"<html><title> </title><body>Real text</body></html>", "Real text"),
        (
            b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>x</body></html>",
            "502 Bad Gateway",
        ),
        (b"\xff\xfe broken", "\ufffd\ufffd broken"),
        ("already text", "already text"),
        (b"", ""),
    ],
)
def test_an_error_body_is_shown_by_its_message_fields_or_its_start(body: bytes | str, shown: str) -> None:
    assert excerpt(body) == shown


def test_a_long_error_body_is_cut_to_a_fixed_length_with_an_ellipsis() -> None:
    assert excerpt("x" * EXCERPT_CHARS) == "x" * EXCERPT_CHARS
    cut = excerpt("y" * (EXCERPT_CHARS + 1))
    assert cut == "y" * (EXCERPT_CHARS - 1) + "…" and len(cut) == EXCERPT_CHARS


def test_a_status_is_described_with_its_excerpt_when_there_is_one() -> None:
    assert describe_status("listing", 500, b"") == "listing: HTTP 500"
    assert describe_status("listing", 502, b'{"errors": "Bad gateway"}') == "listing: HTTP 502: Bad gateway"


def test_backoff_doubles_from_its_base_up_to_its_cap_with_full_jitter() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    assert [policy.backoff(n, rng=lambda: 1.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.backoff(3, rng=lambda: 0.25) == 1.0
    assert policy.backoff(1000, rng=lambda: 1.0) == 30.0


# -- what each answer of the API becomes ------------------------------------------------------------


async def answer_of(
    sim: Simulator, *answers: web.Response, once: bool = False, **options: Any
) -> tuple[Any, int]:
    """What `get_json` makes of a server giving `answers` in turn: the result or the error, and
    how many requests it took. `options` go to `ProcoreHttp`."""
    async with scripted(*answers) as (base, seen), client(sim, api_base=base, **options) as api:
        try:
            result: Any = await api.http.get_json(
                URL(f"{base}/rest/v1.0/projects"), what="listing", once=once
            )
        except ProcoreError as exc:
            result = exc
    return result, len(seen)


@pytest.mark.parametrize("status", [300, 301, 404])
async def test_an_answer_that_is_not_a_success_is_an_error_with_its_status(
    sim: Simulator, status: int
) -> None:
    error, requests = await answer_of(sim, web.Response(status=status, text='{"errors": "No"}'))
    assert isinstance(error, ProcoreError) and not isinstance(error, TransientError)
    assert (str(error), error.status, requests) == (f"listing: HTTP {status}: No", status, 1)


async def test_a_server_error_is_tried_again_and_named_when_it_persists(sim: Simulator) -> None:
    error, requests = await answer_of(sim, web.Response(status=500, text="down"))
    assert isinstance(error, TransientError)
    assert (str(error), error.status, requests) == (
        "listing: HTTP 500: down (gave up after 8 attempts)",
        500,
        8,
    )


async def test_a_request_timeout_is_tried_again_like_a_server_error(sim: Simulator) -> None:
    """Procore answers 408 when fetching a large dataset takes too long."""
    timed_out = web.Response(status=408, text="Request Timeout")
    result, requests = await answer_of(sim, timed_out, web.json_response([1]))
    assert (result.data, requests) == ([1], 2)


async def test_a_single_attempt_is_one_request(sim: Simulator) -> None:
    error, requests = await answer_of(sim, web.Response(status=500, text="down"), once=True)
    assert (str(error), requests) == ("listing: HTTP 500: down", 1)


async def test_an_answer_that_is_not_json_is_tried_again_then_named_with_its_start(sim: Simulator) -> None:
    error, requests = await answer_of(sim, web.Response(status=200, text="<html>maintenance</html>"))
    assert isinstance(error, TransientError) and error.status == 200 and requests == 8
    assert str(error) == "listing: answer is not JSON: 'maintenance' (gave up after 8 attempts)"


@asynccontextmanager
async def cutting(status: int) -> AsyncIterator[str]:
    """A server whose answers (of `status`) promise 100 bytes and hang up after 5; its base URL."""

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"[1, 2")
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", cut)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_body_cut_short_is_tried_again(sim: Simulator) -> None:
    async with cutting(200) as base, client(sim, api_base=base) as api:
        with pytest.raises(TransientError) as caught:
            await api.http.get_json(URL(f"{base}/rest/v1.0/projects"), what="listing", once=True)
    assert str(caught.value) == "listing: body cut short (ClientPayloadError)"


async def test_an_error_whose_body_is_cut_short_is_named_by_its_status_alone(sim: Simulator) -> None:
    async with cutting(500) as base, client(sim, api_base=base) as api:
        with pytest.raises(TransientError) as caught:
            await api.http.get_json(URL(f"{base}/rest/v1.0/projects"), what="listing", once=True)
    assert str(caught.value) == "listing: HTTP 500"


async def test_a_token_refused_twice_is_an_auth_error_naming_the_call(sim: Simulator) -> None:
    refused = web.Response(status=401, text="Unauthorized")
    error: Any = None
    async with scripted(refused) as (base, seen), client(sim, api_base=base) as api:
        try:
            await api.http.get_json(URL(f"{base}/rest/v1.0/projects"), what="listing")
        except AuthError as exc:
            error = exc
    assert str(error) == "listing: Procore refused the access token (HTTP 401)"
    assert len(seen) == 2, "renewed once, then given up"


async def test_a_retry_after_a_server_error_waits_its_backoff(sim: Simulator) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(attempts=2, base_delay=1.0, max_delay=10.0)
    error, requests = await answer_of(sim, web.Response(status=502), retry=policy, sleep=sleep)
    assert str(error) == "listing: HTTP 502 (gave up after 2 attempts)" and requests == 2
    assert len(slept) == 1 and 0 <= slept[0] <= 1.0


async def test_a_retry_after_a_429_waits_in_the_shared_budget_not_alone(sim: Simulator) -> None:
    """Every request waits out a 429, so the retry does not sleep on its own as well."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = Pacer(jitter=lambda: 0.0)
    refused = web.Response(status=429, headers={"Retry-After": "0.1"})
    result, requests = await answer_of(
        sim, refused, refused, web.json_response([1]), pacer=pacer, sleep=sleep
    )
    assert (result.data, requests, slept) == ([1], 3, [])
    assert pacer.waited > 0.15 and pacer.throttled == 2


async def test_each_request_is_counted_for_the_work_that_sent_it(sim: Simulator) -> None:
    tally = Tally()
    counting = TALLY.set(tally)
    try:
        async with client(sim) as api:
            await api.projects()
            await api.projects()
    finally:
        TALLY.reset(counting)
    assert sim.stats.requests["projects"] == 2 and sim.stats.tokens_issued == 1
    assert tally.requests == 3, "the token request is counted too"


async def test_a_run_of_retries_is_one_warning_and_then_a_count(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    down = web.json_response({"error": "down"}, status=502)
    async with (
        scripted(down, down, down, web.json_response([])) as (base, _),
        client(sim, api_base=base) as api,
    ):
        with caplog.at_level(logging.INFO, logger="syncer"):
            await api.http.get_json(URL(f"{base}/rest/v1.0/projects"), what="listing")
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("listing")]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    assert said[0][1].startswith("listing: HTTP 502") and "; retry 2/" in said[0][1]
    assert said[1][1] == f"listing: answered at attempt 4 of {FAST.attempts}"


async def test_an_unreachable_api_is_named_with_the_transport_error(sim: Simulator) -> None:
    async with scripted(web.json_response([])) as (base, _):
        pass  # its port is closed now
    async with client(sim, api_base=base) as api:
        with pytest.raises(
            TransientError, match=r"^listing: cannot reach 127.0.0.1:\d+: connection refused"
        ) as caught:
            await api.http.get_json(URL(f"{base}/rest/v1.0/projects"), what="listing", once=True)
    assert caught.value.status is None
    assert "; check procore.api_base, and that this machine may connect there" in str(caught.value)


async def test_a_429_without_retry_after_waits_for_the_windows_reset(sim: Simulator) -> None:
    reset = str(int(time.time()) + 5)
    refused = web.Response(
        status=429,
        headers={"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": reset},
    )
    async with scripted(refused) as (base, _), client(sim, api_base=base) as api:
        with pytest.raises(TransientError) as caught:
            await api.http.open(URL(f"{base}/storage/1"), what="a file")
    assert caught.value.wait is not None and 3.0 < caught.value.wait <= 5.0


async def test_a_503_without_retry_after_leaves_the_wait_to_the_caller(sim: Simulator) -> None:
    refused = web.Response(
        status=503,
        headers={"X-Rate-Limit-Limit": "25", "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "9"},
    )
    async with scripted(refused) as (base, _), client(sim, api_base=base) as api:
        with pytest.raises(TransientError) as caught:
            await api.http.open(URL(f"{base}/storage/1"), what="a file")
    assert caught.value.wait is None and caught.value.status == 503


async def test_a_retry_after_given_as_a_date_is_read_against_the_clock(sim: Simulator) -> None:
    refused = web.Response(status=429, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    async with scripted(refused) as (base, _), client(sim, api_base=base) as api:
        with pytest.raises(TransientError) as caught:
            await api.http.open(URL(f"{base}/storage/1"), what="a file")
    assert caught.value.wait is not None and 25 < caught.value.wait <= 30


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_refused_client_credentials_are_an_auth_error_saying_why(sim: Simulator, status: int) -> None:
    refused = web.json_response({"error": "invalid_client"}, status=status)
    async with scripted(refused) as (login, seen), client(sim, login_base=login) as api:
        with pytest.raises(AuthError) as caught:
            await api.projects()
    assert str(caught.value).startswith(
        f"Procore refused the client credentials: HTTP {status}: invalid_client; "
    )
    assert len(seen) == 1, "not tried again"


async def test_an_unknown_client_is_told_to_check_sandbox_against_production(sim: Simulator) -> None:
    refused = web.json_response({"error": "invalid_client"}, status=401)
    async with scripted(refused) as (login, _), client(sim, login_base=login) as api:
        with pytest.raises(AuthError) as caught:
            await api.projects()
    assert "check procore.client_id and procore.client_secret" in str(caught.value)
    assert "sandbox credentials work only with the sandbox's hosts" in str(caught.value)


async def test_a_refusal_of_another_kind_gets_no_sandbox_hint(sim: Simulator) -> None:
    refused = web.json_response({"error": "unauthorized_client"}, status=400)
    async with scripted(refused) as (login, _), client(sim, login_base=login) as api:
        with pytest.raises(AuthError) as caught:
            await api.projects()
    assert str(caught.value) == "Procore refused the client credentials: HTTP 400: unauthorized_client"


async def test_a_token_endpoint_that_keeps_failing_is_named_in_the_error(sim: Simulator) -> None:
    failing = web.Response(status=500, text="down")
    policy = RetryPolicy(attempts=2, base_delay=0.01)
    async with scripted(failing) as (login, _), client(sim, login_base=login, retry=policy) as api:
        with pytest.raises(TransientError) as caught:
            await api.projects()
    assert str(caught.value) == "token request: HTTP 500: down (gave up after 2 attempts)"


@pytest.mark.parametrize("status", [300, 404])
async def test_a_token_endpoint_that_answers_otherwise_is_an_error_with_its_status(
    sim: Simulator, status: int
) -> None:
    async with (
        scripted(web.Response(status=status, text="moved")) as (login, _),
        client(sim, login_base=login) as api,
    ):
        with pytest.raises(ProcoreError) as caught:
            await api.projects()
    assert (str(caught.value), caught.value.status) == (f"token request: HTTP {status}: moved", status)


async def test_a_token_answer_that_is_not_json_is_tried_again_then_named(sim: Simulator) -> None:
    policy = RetryPolicy(attempts=2, base_delay=0.01)
    async with (
        scripted(web.Response(text="<html>")) as (login, seen),
        client(sim, login_base=login, retry=policy) as api,
    ):
        with pytest.raises(TransientError) as caught:
            await api.projects()
    assert (
        str(caught.value) == "token request: answer is not JSON (gave up after 2 attempts)" and len(seen) == 2
    )


async def test_a_token_answer_of_the_wrong_shape_is_an_auth_error(sim: Simulator) -> None:
    async with scripted(web.json_response(["token"])) as (login, _), client(sim, login_base=login) as api:
        with pytest.raises(AuthError, match=r"^token request: unexpected answer shape$"):
            await api.projects()
