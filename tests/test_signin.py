"""Signing in as a person (`procore.auth: authorization_code`): `syncer login` by a pasted code or
a loopback redirect, runs that see what the person sees, a refresh token that rotates on every
refresh and dies the moment one is sent, processes that share it, and secrets that stay in the
one file that must hold them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp

from syncer.errors import ExitCode
from syncer.procore.signin import LOGIN_FILE, OUT_OF_BAND
from syncer.procore.signin import authorize_url as authorize_url_for
from syncer.simulator import Simulator
from tests.conftest import write_config
from tests.test_cli import Run, spawn, syncer
from tests.test_daemon import daemon, daemon_config, events, eventually, free_port, hook, stop
from tests.test_guarantees import remount, tmpfs

PAT, SAM = 7001, 7002
ALWAYS_REFRESH = 300.0
"""An access token lifetime the syncer never reuses from the saved sign-in (it renews 300 s before
expiry), so every run starts with a refresh."""


def user_config(sim: Simulator, folder: Path, **procore: Any) -> str:
    return str(write_config(sim, folder, procore={"auth": "authorization_code", **procore}))


def login_file(folder: Path) -> Path:
    return folder / "mirror" / ".syncer" / LOGIN_FILE


async def authorize_url(proc: asyncio.subprocess.Process) -> str:
    """The authorize address `syncer login` prints."""
    assert proc.stdout is not None
    while line := await asyncio.wait_for(proc.stdout.readline(), 30):
        if "/oauth/authorize?" in line.decode():
            return line.decode().strip()
    raise AssertionError("syncer login printed no authorize address")


async def login(sim: Simulator, config: str, *, as_user: int = PAT, **options: Any) -> Run:
    """`syncer login` with the code pasted, as a person would after approving in a browser;
    `options` for the process (`user=`, `python=`, ...)."""
    sim.sign_in.auto_approve = as_user
    proc = await spawn("login", "--config", config, stdin=asyncio.subprocess.PIPE, **options)
    url = await authorize_url(proc)
    async with aiohttp.ClientSession() as browser, browser.get(url) as page:
        found = re.search(r'id="code">([^<]+)<', await page.text())
    assert found, "the out-of-band page shows a code"
    out, err = await asyncio.wait_for(proc.communicate(found[1].encode() + b"\n"), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def signed_in(make_sim: Any, tmp_path: Path, *, ttl: float = 5400.0) -> tuple[Simulator, str]:
    """A company and a person signed in to it; access tokens live `ttl` seconds."""
    sim = await make_sim(photos=24, projects=3)
    sim.sign_in.token_ttl = ttl
    config = user_config(sim, tmp_path)
    run = await login(sim, config)
    assert run.code == ExitCode.OK, run.err
    return sim, config


def saved_refresh_token(folder: Path) -> str:
    return str(json.loads(login_file(folder).read_text())["refresh_token"])


async def test_login_with_a_pasted_code_saves_a_sign_in_only_its_owner_can_read(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=12, projects=2)
    run = await login(sim, user_config(sim, tmp_path))
    assert run.code == ExitCode.OK, run.err
    assert "signed in to Procore as Pat Jones (pat@example.com)" in run.out
    assert f"company {sim.company.name} ({sim.company.id}) is visible" in run.out
    saved = login_file(tmp_path)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved_refresh_token(tmp_path) in sim.sign_in.refresh_tokens


async def test_login_through_a_loopback_redirect(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=12, projects=2)
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    config = user_config(sim, tmp_path, redirect_uri=redirect)
    sim.sign_in.auto_approve = PAT
    proc = await spawn("login", "--config", config)
    url = await authorize_url(proc)
    async with aiohttp.ClientSession() as browser:
        async with browser.get(f"{redirect}?code=forged&state=not-this-login") as forged:
            assert forged.status == 400  # a code another page sends is refused
        async with browser.get(url) as landed:  # Procore sends the browser back to syncer login
            assert "Signed in" in await landed.text()
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == ExitCode.OK, err.decode()
    assert "signed in to Procore as Pat Jones" in out.decode()
    assert saved_refresh_token(tmp_path) in sim.sign_in.refresh_tokens


async def test_a_sync_as_a_person_mirrors_the_projects_they_are_a_member_of(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await signed_in(make_sim, tmp_path)
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.OK, run.err
    member = sim.sign_in.users[PAT].projects
    assert member and member != set(sim.company.projects)
    mirrored = {int(p.name.split("_", 1)[0]) for p in (tmp_path / "mirror").rglob("*.jpg")}
    mirrored |= {int(p.name.split("_", 1)[0]) for p in (tmp_path / "mirror").rglob("*.JPG")}
    assert mirrored == {p.id for p in sim.company.photos.values() if p.project_id in member}


async def test_the_refresh_token_rotates_across_three_runs(make_sim: Any, tmp_path: Path) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    seen = [saved_refresh_token(tmp_path)]
    before = sim.sign_in.stats.refreshes
    for _ in range(3):
        run = await syncer("sync", "--config", config)
        assert run.code == ExitCode.OK, run.err
        seen.append(saved_refresh_token(tmp_path))
    assert sim.sign_in.stats.refreshes - before == 3
    assert len(set(seen)) == 4, "each refresh saved a new refresh token"
    assert [token in sim.sign_in.refresh_tokens for token in seen] == [False, False, False, True]


async def test_a_sign_in_procore_refuses_exits_3_naming_syncer_login(make_sim: Any, tmp_path: Path) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    sim.sign_in.revoke_user(PAT)  # an admin removed the person, or they revoked the app
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.AUTH
    assert "syncer login" in run.err and len(run.err.strip().splitlines()) == 1


async def test_killed_while_procore_answers_a_refresh_the_next_run_asks_for_a_login(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    sim.sign_in.refresh_delay = 30  # the refresh token is spent; its successor is still on its way
    proc = await spawn("sync", "--config", config)
    before = sim.sign_in.stats.refreshes
    await eventually(lambda: sim.sign_in.stats.refreshes > before, what="the refresh to arrive")
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    sim.sign_in.refresh_delay = 0
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.AUTH
    assert "a refresh was interrupted" in run.err and "syncer login" in run.err


async def test_killed_at_any_moment_the_next_run_works_or_asks_for_a_login(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    sim.sign_in.refresh_delay = 0.3
    rng = random.Random(5)
    for _ in range(3):
        proc = await spawn("sync", "--config", config)
        await asyncio.sleep(rng.uniform(0.2, 2.5))
        with contextlib.suppress(ProcessLookupError):  # it may have finished
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
        run = await syncer("sync", "--config", config)
        if run.code == ExitCode.AUTH:  # killed inside the one window Procore leaves: said so
            assert "a refresh was interrupted" in run.err and "syncer login" in run.err
            assert (await login(sim, config)).code == ExitCode.OK
        else:
            assert run.code == ExitCode.OK, run.err


async def test_two_processes_refreshing_at_once_never_spend_the_same_token(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    first, second = sorted(sim.sign_in.users[PAT].projects)[:2]
    sim.sign_in.refresh_delay = 1.0  # wide enough for both to try at once
    both = await asyncio.gather(
        syncer("sync", "--config", config, "--project", str(first)),
        syncer("sync", "--config", config, "--project", str(second)),
    )
    assert [run.code for run in both] == [ExitCode.OK, ExitCode.OK], [run.err for run in both]
    assert sim.sign_in.stats.refused_refreshes == 0
    assert saved_refresh_token(tmp_path) in sim.sign_in.refresh_tokens


async def test_no_token_or_code_is_in_any_output_or_file_but_the_sign_in(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    runs = [await syncer("sync", "-v", "--config", config) for _ in range(2)]
    runs += [
        await syncer("status", "--config", config),
        await syncer("sync", "-v", "--log-format", "json", "--config", config),
    ]
    assert [run.code for run in runs] == [ExitCode.OK] * 4, [run.err[-300:] for run in runs]
    secrets_issued = [s for s in sim.sign_in.stats.issued if len(s) >= 20]
    assert len(secrets_issued) >= 8
    said = "".join(run.out + run.err for run in runs)
    assert not [s for s in secrets_issued if s in said]
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != login_file(tmp_path):
            data = path.read_bytes()
            assert not [s for s in secrets_issued if s.encode() in data], f"a token in {path}"


async def test_logout_revokes_the_sign_in_and_forgets_it(make_sim: Any, tmp_path: Path) -> None:
    sim, config = await signed_in(make_sim, tmp_path)
    token = saved_refresh_token(tmp_path)
    run = await syncer("logout", "--config", config)
    assert run.code == ExitCode.OK, run.err
    assert "revoked in Procore" in run.out
    assert not login_file(tmp_path).exists() and token not in sim.sign_in.refresh_tokens
    after = await syncer("sync", "--config", config)
    assert after.code == ExitCode.AUTH and "not signed in" in after.err and "syncer login" in after.err


async def test_a_person_who_cannot_see_the_company_is_told_which_companies_they_can(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=12, projects=2)
    run = await login(sim, user_config(sim, tmp_path), as_user=SAM)
    assert run.code == ExitCode.USAGE
    assert f"cannot see company {sim.company.id}" in run.err and "Other Builders (99001)" in run.err


async def test_login_says_when_the_company_refuses_user_installs(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=12, projects=2)
    sim.sign_in.allow_user_installs = False
    run = await login(sim, user_config(sim, tmp_path))
    assert run.code == ExitCode.USAGE and "Allow User Installs" in run.err


async def test_a_company_that_refuses_user_installs_says_so(make_sim: Any, tmp_path: Path) -> None:
    sim, config = await signed_in(make_sim, tmp_path)
    sim.sign_in.allow_user_installs = False
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.USAGE
    assert "Allow User Installs" in run.err and len(run.err.strip().splitlines()) == 1


async def test_the_daemon_reports_a_refused_sign_in_once_and_resumes_after_a_login(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, _ = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    command, sink = hook(tmp_path, "exit 0")
    config = daemon_config(sim, tmp_path, notify={"command": command}, procore={"auth": "authorization_code"})
    sim.sign_in.revoke_user(PAT)
    async with daemon(config, tmp_path) as running:
        await eventually(lambda: events(sink), what="the auth_failed notification")
        await asyncio.sleep(2.5)
        assert [e["event"] for e in events(sink)] == ["auth_failed"]
        assert "syncer login" in events(sink)[0]["error"]
        assert (await login(sim, str(config))).code == ExitCode.OK
        await eventually(lambda: len(events(sink)) == 2, what="the recovery notification")
        await eventually(running.runs, what="syncing to resume")
        await stop(running)
    assert login_file(tmp_path).exists()


async def out_of_band_code(client: aiohttp.ClientSession, sim: Simulator) -> str:
    """A code Pat approved for the out-of-band redirect URI."""
    sim.sign_in.auto_approve = PAT
    settings = sim.procore_settings()
    url = authorize_url_for(settings["login_base"], settings["client_id"], OUT_OF_BAND, "s")
    async with client.get(url) as page:
        found = re.search(r'id="code">([^<]+)<', await page.text())
    assert found
    return found[1]


def token_form(sim: Simulator, **grant: str) -> dict[str, str]:
    settings = sim.procore_settings()
    return {**grant, "client_id": settings["client_id"], "client_secret": settings["client_secret"]}


async def test_the_simulator_refuses_a_code_brought_to_another_redirect_uri(make_sim: Any) -> None:
    sim = await make_sim(photos=4, projects=1)
    async with aiohttp.ClientSession() as client:
        form = token_form(
            sim,
            grant_type="authorization_code",
            code=await out_of_band_code(client, sim),
            redirect_uri="http://127.0.0.1:9/elsewhere",
        )
        async with client.post(f"{sim.login_base}/oauth/token", data=form) as answer:
            assert answer.status == 400 and (await answer.json())["error"] == "invalid_grant"
        async with client.post(
            f"{sim.login_base}/oauth/token", data={**form, "redirect_uri": OUT_OF_BAND}
        ) as again:
            assert again.status == 400, "a code is spent by a failed exchange too"


async def test_the_simulator_refuses_a_refresh_that_names_another_redirect_uri(make_sim: Any) -> None:
    sim = await make_sim(photos=4, projects=1)
    async with aiohttp.ClientSession() as client:
        code = await out_of_band_code(client, sim)
        exchange = token_form(sim, grant_type="authorization_code", code=code, redirect_uri=OUT_OF_BAND)
        async with client.post(f"{sim.login_base}/oauth/token", data=exchange) as answer:
            refresh_token = (await answer.json())["refresh_token"]
        refresh = token_form(sim, grant_type="refresh_token", refresh_token=refresh_token)
        async with client.post(f"{sim.login_base}/oauth/token", data=refresh) as unnamed:
            assert unnamed.status == 400 and (await unnamed.json())["error"] == "invalid_grant"
        assert refresh_token not in sim.sign_in.refresh_tokens, "spent by the refused refresh too"
    assert sim.sign_in.stats.refused_refreshes == 1


async def test_a_refresh_names_the_redirect_uri_the_sign_in_was_made_with(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, _ = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)  # out of band
    changed = user_config(sim, tmp_path, redirect_uri=f"http://127.0.0.1:{free_port()}/callback")
    before = sim.sign_in.stats.refreshes
    run = await syncer("sync", "--config", changed)
    assert run.code == ExitCode.OK, run.err
    assert (sim.sign_in.stats.refreshes - before, sim.sign_in.stats.refused_refreshes) == (1, 0)


async def test_a_sign_in_saved_without_its_redirect_uri_is_refreshed_with_the_configured_one(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    saved = json.loads(login_file(tmp_path).read_text())
    del saved["redirect_uri"]  # as a sign-in saved before the syncer kept it
    login_file(tmp_path).write_text(json.dumps(saved))
    before = sim.sign_in.stats.refreshes
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.OK, run.err
    assert (sim.sign_in.stats.refreshes - before, sim.sign_in.stats.refused_refreshes) == (1, 0)


def as_at_a_terminal() -> None:
    """Ctrl-C's signal as a terminal delivers it. A test run started in the background of a script
    (`make test &`, some CI runners) inherits SIGINT ignored, and a child that inherits that rightly
    never hears a Ctrl-C: the shell asked it not to."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_at_the_code_prompt_ends_login_at_once(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=4, projects=1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncer", "login", "--config", user_config(sim, tmp_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=as_at_a_terminal,
    )  # fmt: skip
    await authorize_url(proc)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == ExitCode.INTERRUPTED, err.decode()
    assert not login_file(tmp_path).exists()


async def test_a_read_only_mirror_spends_no_refresh_token(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=12, projects=2)
    sim.sign_in.token_ttl = ALWAYS_REFRESH
    with tmpfs(tmp_path / "mirror", "64m") as mirror:
        config = user_config(sim, tmp_path)
        assert (await login(sim, config)).code == ExitCode.OK
        token, spent = saved_refresh_token(tmp_path), sim.sign_in.stats.refreshes
        remount(mirror, "ro")
        try:
            run = await syncer("sync", "--config", config)
        finally:
            remount(mirror, "rw")
        assert run.code == ExitCode.INCOMPLETE
        assert "read-only" in run.err.lower() and len(run.err.strip().splitlines()) == 1
        assert sim.sign_in.stats.refreshes == spent and token in sim.sign_in.refresh_tokens
        assert (await syncer("sync", "--config", config)).code == ExitCode.OK


async def test_logout_while_procore_is_down_still_forgets_the_sign_in(make_sim: Any, tmp_path: Path) -> None:
    sim, config = await signed_in(make_sim, tmp_path)
    await sim.stop()
    run = await syncer("logout", "--config", config)
    assert run.code == ExitCode.OK, run.err
    assert "Procore did not confirm revoking it" in run.out and not login_file(tmp_path).exists()


async def test_login_with_standard_input_from_an_empty_file_says_no_code(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=4, projects=1)
    config = user_config(sim, tmp_path)
    with Path(os.devnull).open("rb") as nothing:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "syncer", "login", "--config", config,
            stdin=nothing, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == ExitCode.USAGE and "no code was pasted" in err.decode()


async def test_sigterm_while_procore_answers_a_refresh_keeps_the_sign_in(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    sim.sign_in.refresh_delay = 2
    proc = await spawn("sync", "--config", config)
    before = sim.sign_in.stats.refreshes
    await eventually(lambda: sim.sign_in.stats.refreshes > before, what="the refresh to arrive")
    proc.send_signal(signal.SIGTERM)  # systemctl stop: the answer is awaited and saved first
    await asyncio.wait_for(proc.wait(), 40)
    assert saved_refresh_token(tmp_path) in sim.sign_in.refresh_tokens
    sim.sign_in.refresh_delay = 0
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK


async def test_a_save_killed_before_its_rename_is_finished_by_the_next_run(
    make_sim: Any, tmp_path: Path
) -> None:
    _sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    saved = login_file(tmp_path)
    newest = saved.read_text()
    saved.with_name(f".{LOGIN_FILE}.0123456789ab.tmp").write_text(newest)  # fsynced, not renamed
    saved.write_text(newest.replace(saved_refresh_token(tmp_path), "spent-by-the-killed-refresh"))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    assert not list(saved.parent.glob(f".{LOGIN_FILE}.*.tmp"))


async def test_a_refresh_answered_by_a_server_error_is_sent_once_and_named(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    sim.config.error_rate = 1.0  # every answer a 5xx, the token endpoint's too
    before = sim.stats.requests["token"]
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.INCOMPLETE
    assert sim.stats.requests["token"] == before + 1, "a refresh is never retried"
    assert "got no usable answer" in run.err and "syncer login" in run.err
    sim.config.error_rate = 0.0
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK  # the token was not spent


async def test_a_folder_where_the_sign_in_goes_is_one_line(make_sim: Any, tmp_path: Path) -> None:
    _sim, config = await signed_in(make_sim, tmp_path, ttl=ALWAYS_REFRESH)
    login_file(tmp_path).unlink()
    login_file(tmp_path).mkdir()
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.AUTH and "is not a file" in run.err
    assert len(run.err.strip().splitlines()) == 1
