"""Configuration: every mistake named by its key; env secrets; paths relative to the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from syncer.config import load_settings, parse_settings
from syncer.errors import ConfigError, ExitCode
from syncer.log import REDACT
from syncer.simulator import Simulator
from tests.conftest import write_config
from tests.test_cli import assert_no_traceback, syncer

ROOT = Path(__file__).resolve().parent.parent
MINIMAL: dict[str, Any] = {
    "procore": {"company_id": 1, "client_id": "id", "client_secret": "minimal-test-secret"}
}


def with_(**sections: Any) -> dict[str, Any]:
    data = {k: dict(v) for k, v in MINIMAL.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def error_for(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(data, Path("/etc/syncer"))
    return str(info.value)


def test_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCORE_CLIENT_ID", "id")
    monkeypatch.setenv("PROCORE_CLIENT_SECRET", "env-test-secret")
    settings = load_settings(ROOT / "config.example.yaml")
    assert settings.sync.concurrency == 8
    assert settings.sync.overlap == 300


def test_unknown_key_is_named() -> None:
    assert error_for(with_(sync={"concurency": 4})) == (
        "sync.concurency: unknown key (check its spelling and config.example.yaml)"
    )


def test_wrong_type_is_named() -> None:
    assert error_for(with_(sync={"concurrency": "many"})).startswith("sync.concurrency: ")


def test_out_of_range_value_is_named() -> None:
    assert "sync.concurrency" in error_for(with_(sync={"concurrency": 0}))


def test_xmp_off_unquoted_is_off_and_on_asks_which_naming() -> None:
    assert parse_settings(yaml.safe_load("mirror: {xmp: off}") | MINIMAL, Path("/etc")).mirror.xmp == "off"
    assert error_for(with_(mirror=yaml.safe_load("{xmp: on}"))) == (
        "mirror.xmp: on/yes/true names no file: use append (IMG_1.jpg.xmp), replace (IMG_1.xmp) or off"
    )


def test_missing_required_key_is_named() -> None:
    assert error_for({"procore": {"company_id": 1, "client_id": "x"}}) == (
        "procore.client_secret: required key is missing"
    )


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_FOR_TEST", "s3cr3t")
    settings = parse_settings(with_(procore={"client_secret": "${SECRET_FOR_TEST}"}), Path("/x"))
    assert settings.procore.client_secret.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(settings)


def test_unset_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert error_for(with_(procore={"client_secret": "${NOT_SET_ANYWHERE}"})) == (
        "procore.client_secret: environment variable NOT_SET_ANYWHERE is not set"
    )


CREDENTIALS_FROM_ENV = {"client_id": "${PROCORE_CLIENT_ID}", "client_secret": "${PROCORE_CLIENT_SECRET}"}


def without_credentials(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `config` take the Procore credentials from variables that are not set, as in an
    operator's shell where only the service has them."""
    monkeypatch.delenv("PROCORE_CLIENT_ID", raising=False)
    monkeypatch.delenv("PROCORE_CLIENT_SECRET", raising=False)
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["procore"].update(CREDENTIALS_FROM_ENV)
    config.write_text(yaml.safe_dump(data), encoding="utf-8")


def test_unset_credentials_load_for_a_command_that_never_calls_procore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROCORE_CLIENT_ID", raising=False)
    monkeypatch.delenv("PROCORE_CLIENT_SECRET", raising=False)
    settings = parse_settings(with_(procore=CREDENTIALS_FROM_ENV), Path("/x"), need_credentials=False)
    assert settings.procore.company_id == 1


def test_an_unset_credential_read_anyway_is_the_error_loading_would_have_been(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROCORE_CLIENT_SECRET", raising=False)
    data = with_(procore={"client_secret": "${PROCORE_CLIENT_SECRET}"})
    settings = parse_settings(data, Path("/x"), need_credentials=False)
    assert settings.procore.client_id.get_secret_value() == "id"
    with pytest.raises(ConfigError) as info:
        settings.procore.client_secret.get_secret_value()
    assert (
        str(info.value)
        == error_for(data)
        == ("procore.client_secret: environment variable PROCORE_CLIENT_SECRET is not set")
    )


def test_without_the_credentials_every_other_key_is_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    monkeypatch.delenv("PROCORE_CLIENT_ID", raising=False)

    def error_without_credentials(**sections: Any) -> str:
        data = with_(**sections)
        data["procore"]["client_id"] = "${PROCORE_CLIENT_ID}"
        with pytest.raises(ConfigError) as info:
            parse_settings(data, Path("/x"), need_credentials=False)
        return str(info.value)

    assert error_without_credentials(sync={"concurrency": 0}).startswith("sync.concurrency: ")
    assert error_without_credentials(database={"url": "postgresql://u:${NOT_SET_ANYWHERE}@db/s"}) == (
        "database.url: environment variable NOT_SET_ANYWHERE is not set"
    )
    assert error_without_credentials(procore={"company_id": 0}).startswith("procore.company_id: ")
    with pytest.raises(ConfigError, match=r"^procore.client_secret: required key is missing$"):
        parse_settings({"procore": {"company_id": 1, "client_id": "x"}}, Path("/x"), need_credentials=False)


@pytest.mark.parametrize("command", ["sync", "retry-failed", "run"])
async def test_commands_that_call_procore_still_need_the_credentials(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    config = write_config(sim, tmp_path)
    without_credentials(config, monkeypatch)
    run = await syncer(command, "--config", str(config))
    assert run.code == ExitCode.USAGE
    assert run.err == "syncer: procore.client_id: environment variable PROCORE_CLIENT_ID is not set\n"
    assert_no_traceback(run)
    assert not (tmp_path / "mirror").exists(), "nothing is touched before the configuration is whole"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "syncer.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(with_(mirror={"root": "photos"}, database={"url": "sqlite:///db/s.db"})))
    settings = load_settings(path)
    assert settings.mirror.root == tmp_path / "conf" / "photos"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/conf/db/s.db"


def test_postgres_url_maps_to_the_async_driver() -> None:
    settings = parse_settings(with_(database={"url": "postgresql://u@db/syncer"}), Path("/x"))
    assert settings.database_url == "postgresql+asyncpg://u@db/syncer"


def test_durations_accept_units() -> None:
    settings = parse_settings(with_(sync={"overlap": "2h", "lag": 30}), Path("/x"))
    assert (settings.sync.overlap, settings.sync.lag) == (7200, 30)
    assert "sync.lag" in error_for(with_(sync={"lag": "soon"}))


def test_updated_at_filter_is_refused_because_the_engine_owns_it() -> None:
    assert "sync.filters.updated_at" in error_for(with_(sync={"filters": {"updated_at": "2026-01-01"}}))


def test_filter_values_are_validated() -> None:
    assert "sync.filters.log_date" in error_for(with_(sync={"filters": {"log_date": "May"}}))
    assert "sync.filters.projection" in error_for(with_(sync={"filters": {"projection": "180"}}))


def test_layout_must_keep_the_photo_id_in_the_file_name() -> None:
    assert error_for(with_(mirror={"layout": "{project}/{filename}"})) == (
        "mirror.layout: the file name part (after the last '/') must contain {id}"
    )


def test_layout_fields_are_checked() -> None:
    assert "unknown field {albun}" in error_for(with_(mirror={"layout": "{albun}/{id}"}))


def test_on_delete_choices() -> None:
    assert error_for(with_(mirror={"on_delete": "shred"})).startswith("mirror.on_delete: ")


def test_base_urls_are_checked() -> None:
    assert error_for(with_(procore={"api_base": "api.procore.com"})).startswith("procore.api_base: ")


def test_not_a_mapping() -> None:
    assert "mapping" in error_for(["procore"])
    assert "empty" in error_for(None)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("procore:\n  company_id: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_settings(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml")


def test_the_workers_share_is_a_part_of_the_budget() -> None:
    assert error_for(with_(procore={"workers_share": 0})).startswith("procore.workers_share: ")
    assert error_for(with_(procore={"workers_share": 1.5})).startswith("procore.workers_share: ")
    assert parse_settings(with_(procore={"workers_share": 0.25}), Path("/x")).procore.workers_share == 0.25


def test_the_lease_time_is_a_duration_of_at_least_three_seconds() -> None:
    assert error_for(with_(database={"lease_ttl": "1s"})).startswith("database.lease_ttl: ")
    assert parse_settings(with_(database={"lease_ttl": "2m"}), Path("/x")).database.lease_ttl == 120.0


def test_the_database_password_is_redacted_from_any_output() -> None:
    parse_settings(with_(database={"url": "postgresql://syncer:s3cr3t-pw@db/syncer"}), Path("/x"))
    assert REDACT("connection to postgresql://syncer:s3cr3t-pw@db failed") == (
        "connection to postgresql://syncer:***@db failed"
    )


def test_a_ca_file_resolves_against_the_config_folder(tmp_path: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "proxy-ca.pem"))
    path = tmp_path / "syncer.yaml"
    path.write_text(yaml.safe_dump(with_(procore={"ca_file": "proxy-ca.pem"})))
    assert load_settings(path).procore.ca_file == tmp_path / "proxy-ca.pem"


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    message = error_for(with_(procore={"ca_file": str(tmp_path / "nowhere.pem")}))
    assert message.startswith("procore.ca_file: no such file"), message


def test_a_ca_file_without_certificates_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.pem").write_text("not a certificate\n")
    message = error_for(with_(procore={"ca_file": str(tmp_path / "notes.pem")}))
    assert message.startswith("procore.ca_file:") and "notes.pem" in message, message


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("mirror", "max_file_size", "lots", "expected a size like 500MB or 2GB, got 'lots'"),
        ("mirror", "max_file_size", "0MB", "a size must be at least one byte"),
        ("mirror", "max_file_size", True, "expected a size like 500MB or 2GB"),
        ("procore", "download_timeout", "0s", "greater than 0"),
        ("sync", "listing_budget", 0, "greater than or equal to 1"),
    ],
)
def test_limits_against_a_hostile_server_are_validated(
    section: str, key: str, value: Any, message: str
) -> None:
    error = error_for(with_(**{section: {key: value}}))
    assert error.startswith(f"{section}.{key}: ") and message in error, error


def test_sizes_take_units_of_1024() -> None:
    settings = parse_settings(with_(mirror={"max_file_size": "1.5 gb"}), Path("/x"))
    assert settings.mirror.max_file_size == 1536 * 1024 * 1024
    assert parse_settings(with_(mirror={"max_file_size": 4096}), Path("/x")).mirror.max_file_size == 4096


def test_a_configuration_from_before_the_round_still_loads() -> None:
    # schedule.misfire_grace belonged to the timers per project; the daemon warns that it is unused
    settings = parse_settings(with_(schedule={"misfire_grace": "5m"}), Path("/etc/syncer"))
    assert settings.schedule.misfire_grace == 300


def test_quiet_slowdown_out_of_range_is_named() -> None:
    assert error_for(with_(schedule={"quiet_slowdown": 0})).startswith("schedule.quiet_slowdown: ")
