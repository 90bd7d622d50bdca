"""Procore over TLS, from the outside: the token travels only over HTTPS to Procore (in the US
government zone too), and a server whose certificate does not verify stops the run in one line."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from yarl import URL

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.simulator import Hosts
from tests.conftest import assert_byte_exact, write_config
from tests.test_cli import Run, assert_no_traceback, syncer
from tests.test_guarantees import blamed_photos


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


LOOPBACK = Hosts()
"""The simulator's own host names: `127.0.0.1` for the API and storage, `localhost` for the store."""


GOV_ZONE = Hosts(
    api="api.procoregov.com",
    login="login.procoregov.com",
    storage="storage.procoregov.com",
    store="sim-bucket.s3.us-gov-west-1.amazonaws.com",
)
"""The US government zone (FedRAMP): Procore's hosts under procoregov.com, S3 outside it."""


def names(hosts: Hosts) -> list[str]:
    return list(dict.fromkeys([hosts.api, hosts.login, hosts.storage, hosts.store]))


def server_context(ca: trustme.CA, hosts: Hosts = LOOPBACK) -> ssl.SSLContext:
    """A server context with a certificate from `ca` for every name in `hosts`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names(hosts)).configure_cert(context)
    return context


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """What the simulator serves every origin with: a certificate for its host names from the test CA."""
    return server_context(ca)


def not_trusted(host: str) -> re.Pattern[str]:
    """The one line a run stops with: the host, why, and what to do."""
    return re.compile(
        rf": the TLS certificate of {re.escape(host)} is not trusted \(unable to get local issuer "
        r"certificate\); if a company proxy or a private CA signs it, name that CA's PEM file in "
        r"procore\.ca_file$"
    )


def trusting(config: Path, ca: trustme.CA) -> Path:
    """The config, told to trust the test CA (`procore.ca_file`, relative to the config)."""
    ca.cert_pem.write_to_path(str(config.parent / "test-ca.pem"))
    data = yaml.safe_load(config.read_text())
    data["procore"]["ca_file"] = "test-ca.pem"
    config.write_text(yaml.safe_dump(data))
    return config


async def test_over_tls_the_token_is_not_sent_on_a_redirect_to_plain_http(
    make_sim: Any, server_tls: ssl.SSLContext, ca: trustme.CA, tmp_path: Path
) -> None:
    sim = await make_sim(tls=server_tls, downgrade_hop=True)
    assert sim.api_base.startswith("https://127.0.0.1:")
    assert sim.plain_base.startswith("http://127.0.0.1:"), "the same host, without TLS"
    config = trusting(write_config(sim, tmp_path), ca)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    assert_byte_exact(sim, load_settings(config))
    assert sum(sim.stats.file_requests.values()) >= 60, "each file URL was asked with the token, over TLS"
    assert sim.stats.unauthorized == 0
    assert sim.stats.plain_authorization_headers == []
    assert sim.stats.store_authorization_headers == []


async def test_a_certificate_that_does_not_verify_stops_the_run_in_one_line(
    make_sim: Any, server_tls: ssl.SSLContext, tmp_path: Path
) -> None:
    sim = await make_sim(tls=server_tls)
    run = await syncer("sync", "--config", str(write_config(sim, tmp_path)))  # no ca_file
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    (line,) = run.err.strip().splitlines()
    assert not_trusted("127.0.0.1").search(line), line
    assert line.startswith("syncer: token request: the TLS certificate"), "it names what was being done"
    assert sim.stats.tokens_issued == 0 and not sim.stats.downloads


async def test_an_object_store_whose_certificate_does_not_verify_stops_the_run_and_blames_no_photo(
    make_sim: Any, server_tls: ssl.SSLContext, ca: trustme.CA, tmp_path: Path
) -> None:
    store_tls = server_context(trustme.CA())  # a CA the config does not name
    sim = await make_sim(tls=server_tls, store_tls=store_tls)
    config = trusting(write_config(sim, tmp_path), ca)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    (line,) = run.err.strip().splitlines()
    assert not_trusted(LOOPBACK.store).search(line), line
    assert re.match(r"syncer: photo \d+: the TLS certificate", line), "it names what was being done"
    assert blamed_photos(config) == []
    assert not sim.stats.downloads


needs_own_hosts = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="giving a syncer process its own /etc/hosts takes root and unshare (util-linux)",
)


async def syncer_resolving(hosts: Hosts, folder: Path, *args: str) -> Run:
    """A `syncer` process for which every name in `hosts` is 127.0.0.1: its own /etc/hosts,
    bind-mounted in a mount namespace of its own, so nothing else on the machine sees it."""
    hosts_file = folder / "hosts"
    hosts_file.write_text("".join(f"127.0.0.1 {name}\n" for name in ["localhost", *names(hosts)]))
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "--mount",
        "sh",
        "-c",
        'mount --bind "$0" /etc/hosts && exec "$@"',
        str(hosts_file),
        sys.executable,
        "-m",
        "syncer",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@needs_own_hosts
async def test_in_the_us_government_zone_the_token_goes_to_its_storage_host_and_never_to_s3(
    make_sim: Any, ca: trustme.CA, tmp_path: Path
) -> None:
    sim = await make_sim(photos=12, projects=1, hosts=GOV_ZONE, tls=server_context(ca, GOV_ZONE))
    assert URL(sim.storage_base).host == "storage.procoregov.com", "not under procore.com"
    config = trusting(write_config(sim, tmp_path), ca)
    run = await syncer_resolving(GOV_ZONE, tmp_path, "sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.out + run.err
    assert_byte_exact(sim, load_settings(config))
    files = sum(sim.stats.file_requests.values())
    assert files >= 12 and sim.stats.requests["file_v5"] == files, "every file request had the token"
    assert sim.stats.unauthorized == 0
    assert sim.stats.store_authorization_headers == [], "nor did S3, outside the zone, ever get it"
