"""Procore over TLS, from the outside: the token travels only over HTTPS to Procore, and a server
whose certificate does not verify stops the run in one line."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from syncer.config import load_settings
from syncer.errors import ExitCode
from tests.conftest import assert_byte_exact, write_config
from tests.test_cli import assert_no_traceback, syncer
from tests.test_guarantees import blamed_photos


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """What the simulator serves both origins with: a certificate for 127.0.0.1 from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


NOT_TRUSTED = re.compile(
    r": the TLS certificate of 127\.0\.0\.1 is not trusted \(unable to get local issuer certificate\); "
    r"if a company proxy or a private CA signs it, name that CA's PEM file in procore\.ca_file$"
)
"""The one line a run stops with: the host, why, and what to do."""


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
    assert NOT_TRUSTED.search(line), line
    assert line.startswith("syncer: token request: the TLS certificate"), "it names what was being done"
    assert sim.stats.tokens_issued == 0 and not sim.stats.downloads


async def test_an_object_store_whose_certificate_does_not_verify_stops_the_run_and_blames_no_photo(
    make_sim: Any, server_tls: ssl.SSLContext, ca: trustme.CA, tmp_path: Path
) -> None:
    store_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(store_tls)  # a CA the config does not name
    sim = await make_sim(tls=server_tls, store_tls=store_tls)
    config = trusting(write_config(sim, tmp_path), ca)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    (line,) = run.err.strip().splitlines()
    assert NOT_TRUSTED.search(line), line
    assert re.match(r"syncer: photo \d+: the TLS certificate", line), "it names what was being done"
    assert blamed_photos(config) == []
    assert not sim.stats.downloads
