"""What deploy/ ships, checked from outside: the cron lines as cron's shell runs them, the systemd
units as systemd reads them (`systemd-analyze verify`, `security`, `calendar`), the sandbox against
the system calls a real run makes, and config.example.yaml against the settings model."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from syncer.config import Settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DAEMON = "procore-photo-sync.service"
NIGHTLY = "procore-photo-sync-once.service"
WEEKLY = "procore-photo-sync-full.service"
SERVICES = [DAEMON, NIGHTLY, WEEKLY]
TIMERS = ["procore-photo-sync-once.timer", "procore-photo-sync-full.timer"]
SYNCER = "/usr/local/bin/syncer"
ETC = "/etc/procore-photo-sync/"
SECRETS = {"PROCORE_CLIENT_ID": "cron-client-id", "PROCORE_CLIENT_SECRET": "cron-client-secret"}

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing (Debian's systemd package; .ci/run installs it as root)",
)
needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is missing (Debian's strace; .ci/run installs it as root)"
)


def unit_keys(name: str) -> dict[str, list[str]]:
    """Each `Key=value` of a unit file in deploy/, in order, per key."""
    keys: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False)


# -- the units --------------------------------------------------------------------------------


def test_deploy_units_run_the_documented_commands() -> None:
    config = "--config /etc/procore-photo-sync/config.yaml --log-format json"
    assert unit_keys(DAEMON)["ExecStart"] == [f"{SYNCER} run {config}"]
    assert unit_keys(NIGHTLY)["ExecStart"] == [f"{SYNCER} sync {config} --progress off"]
    assert unit_keys(WEEKLY)["ExecStart"] == [f"{SYNCER} sync --full {config} --progress off"]


@needs_systemd_analyze
@pytest.mark.parametrize("unit", SERVICES + TIMERS)
def test_systemd_accepts_the_unit(unit: str, tmp_path: Path) -> None:
    # verify also checks that ExecStart's program exists; the copies run a stand-in at another
    # path, everything else in them is as shipped. Any warning (an unknown or misspelt key,
    # a bad value) fails the test as well as a non-zero exit.
    stand_in = tmp_path / "bin" / "syncer"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    for name in SERVICES + TIMERS:
        text = (DEPLOY / name).read_text()
        (tmp_path / name).write_text(text.replace(SYNCER, str(stand_in)))
    result = systemd_analyze("verify", "--man=no", str(tmp_path / unit))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
@pytest.mark.parametrize("service", SERVICES)
def test_systemd_analyze_security_rates_the_service_ok(service: str) -> None:
    result = systemd_analyze("security", "--offline=true", str(DEPLOY / service))
    exposure = re.search(rf"Overall exposure level for {re.escape(service)}: (\d+\.\d+) ", result.stdout)
    assert exposure is not None, result.stdout + result.stderr
    assert float(exposure.group(1)) < 4.0, result.stdout  # 4.0 and above: MEDIUM, EXPOSED, UNSAFE


RUN_KEYS = {"Description", "Type", "ExecStart", "ExecReload", "KillSignal", "TimeoutStopSec", "Restart"}
RUN_KEYS |= {"RestartSec", "RestartPreventExitStatus", "SuccessExitStatus", "WantedBy"}
"""What the daemon and the one-shot runs set differently: what runs, and how it starts and ends."""


def sandbox(service: str) -> dict[str, list[str]]:
    """Everything else: who the service runs as, with which secrets, where it may write, what it
    may do."""
    return {k: v for k, v in unit_keys(service).items() if k not in RUN_KEYS}


def test_the_three_services_share_one_sandbox() -> None:
    assert sandbox(NIGHTLY) == sandbox(DAEMON)
    assert sandbox(WEEKLY) == sandbox(DAEMON)


def test_the_services_may_write_where_the_documented_config_keeps_the_database_and_mirror(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROCORE_CLIENT_ID", "id")
    monkeypatch.setenv("PROCORE_CLIENT_SECRET", "deploy-test-secret")
    operations = (ROOT / "docs" / "operations.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", operations, re.DOTALL) if "/var/lib/" in b]
    assert len(blocks) == 1, "docs/operations.md shows one config for the services"
    config = yaml.safe_load(blocks[0])
    (secrets,) = unit_keys(DAEMON)["EnvironmentFile"]
    assert config["procore"]["secrets_file"] == secrets, "the commands by hand read the units' secrets"
    config["procore"]["secrets_file"] = str(tmp_path / "secrets.env")  # this machine has no /etc one
    (tmp_path / "secrets.env").write_text("")
    (tmp_path / "secrets.env").chmod(0o640)
    settings = parse_settings(config, Path(ETC))
    database = Path(settings.database.url.removeprefix("sqlite:///"))
    keys = unit_keys(DAEMON)
    assert database.parent == Path("/var/lib") / keys["StateDirectory"][0]
    assert str(settings.mirror.root) in keys["ReadWritePaths"][0].split()


# -- the timers -------------------------------------------------------------------------------


def run_days(timer: str, days: int) -> list[str]:
    """The dates on which `timer` starts its service over the next `days` days: `Sun 2026-11-29`."""
    (calendar,) = unit_keys(timer)["OnCalendar"]
    result = systemd_analyze("calendar", f"--iterations={days}", calendar)
    assert result.returncode == 0, result.stderr
    starts: list[str] = re.findall(
        r"^\s*(?:Next elapse|Iter\. #\d+): (\w{3} \d{4}-\d\d-\d\d) ", result.stdout, re.M
    )
    assert len(starts) == days, result.stdout
    return starts


@needs_systemd_analyze
def test_the_weekly_full_run_takes_sundays_and_the_nightly_run_the_other_days() -> None:
    nightly = run_days(TIMERS[0], 12)
    weekly = run_days(TIMERS[1], 2)
    assert {day.split()[0] for day in nightly} == {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}
    assert {day.split()[0] for day in weekly} == {"Sun"}


def test_each_timer_starts_the_service_of_its_name() -> None:
    for timer in TIMERS:
        assert "Unit" not in unit_keys(timer)
        assert (DEPLOY / timer.replace(".timer", ".service")).exists()
        assert unit_keys(timer.replace(".timer", ".service"))["Type"] == ["oneshot"]


# -- cron -------------------------------------------------------------------------------------


@dataclass
class CronJob:
    shell: str
    schedule: str
    user: str
    command: str


def cron_jobs() -> list[CronJob]:
    """The jobs of deploy/crontab, a /etc/cron.d file: five time fields, the user, the command,
    run with the file's SHELL (cron's default: /bin/sh)."""
    shell = "/bin/sh"
    jobs = []
    for line in (DEPLOY / "crontab").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if re.match(r"^[A-Z_]+=", line):
            name, _, value = line.partition("=")
            if name == "SHELL":
                shell = value.strip()
            continue
        fields = line.split(None, 6)
        jobs.append(CronJob(shell, " ".join(fields[:5]), fields[5], fields[6]))
    return jobs


@dataclass
class CronRun:
    code: int
    syncer_saw: str
    logged: str
    stderr: str


def run_cron_job(job: CronJob, tmp_path: Path, exit_code: int) -> CronRun:
    """Run the job's command as cron would (`SHELL -c command`, cron's small environment), with
    /etc/procore-photo-sync and /usr/local/bin/syncer moved into `tmp_path`: a stand-in syncer
    that reports the credentials it was given and exits with `exit_code`, and a stand-in logger."""
    etc, bin_ = tmp_path / "etc", tmp_path / "bin"
    etc.mkdir()
    bin_.mkdir()
    (etc / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    (etc / "secrets.env").chmod(0o600)
    saw = tmp_path / "syncer-saw"
    scripts = {
        "syncer": f'echo "id=$PROCORE_CLIENT_ID secret=$PROCORE_CLIENT_SECRET" >{saw}\n'
        'echo "syncer output: $*"\necho "syncer error output" >&2\n'
        f"exit {exit_code}\n",
        "logger": f'cat >>{tmp_path / "syslog"}\necho "logger args: $*" >>{tmp_path / "syslog"}\n',
    }
    for name, body in scripts.items():
        (bin_ / name).write_text("#!/bin/sh\n" + body)
        (bin_ / name).chmod(stat.S_IRWXU)
    command = job.command.replace(ETC, f"{etc}/").replace(SYNCER, str(bin_ / "syncer"))
    assert ETC not in command and SYNCER not in command
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": job.shell, "LOGNAME": job.user}
    result = subprocess.run(
        [job.shell, "-c", command], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    syslog = tmp_path / "syslog"
    return CronRun(
        result.returncode,
        saw.read_text() if saw.exists() else "",
        syslog.read_text() if syslog.exists() else "",
        result.stderr,
    )


def test_cron_runs_the_incremental_sync_monday_to_saturday_and_the_full_one_on_sunday() -> None:
    jobs = {job.schedule: job for job in cron_jobs()}
    assert set(jobs) == {"0 2 * * 1-6", "0 2 * * 0"}
    assert " sync --config " in jobs["0 2 * * 1-6"].command
    assert " sync --full --config " in jobs["0 2 * * 0"].command
    assert {job.user for job in jobs.values()} == {"procore-sync"}


@pytest.mark.parametrize("job", cron_jobs(), ids=lambda job: job.schedule)
def test_cron_jobs_give_the_syncer_the_credentials_from_secrets_env(job: CronJob, tmp_path: Path) -> None:
    run = run_cron_job(job, tmp_path, exit_code=0)
    assert run.syncer_saw == "id=cron-client-id secret=cron-client-secret\n", run.stderr
    assert run.code == 0


@pytest.mark.parametrize("exit_code", [1, 2, 3, 4])
@pytest.mark.parametrize("job", cron_jobs(), ids=lambda job: job.schedule)
def test_cron_jobs_exit_with_the_syncers_exit_status(job: CronJob, exit_code: int, tmp_path: Path) -> None:
    assert run_cron_job(job, tmp_path, exit_code).code == exit_code


@pytest.mark.parametrize("job", cron_jobs(), ids=lambda job: job.schedule)
def test_cron_jobs_send_all_the_syncers_output_to_syslog(job: CronJob, tmp_path: Path) -> None:
    run = run_cron_job(job, tmp_path, exit_code=1)
    assert run.logged.splitlines() == [
        f"syncer output: sync{' --full' if '--full' in job.command else ''} --config "
        f"{tmp_path}/etc/config.yaml --progress off",
        "syncer error output",
        "logger args: -t procore-photo-sync",
    ]
    assert run.stderr == ""


def test_a_cron_job_without_its_secrets_file_fails_as_a_configuration_error(tmp_path: Path) -> None:
    job = cron_jobs()[0]
    missing = CronJob(job.shell, job.schedule, job.user, job.command.replace("secrets.env", "absent.env"))
    run = run_cron_job(missing, tmp_path, exit_code=0)
    assert (run.code, run.syncer_saw) == (2, "")


# -- the sandbox against a real run -----------------------------------------------------------


def syscall_set(group: str) -> set[str]:
    """The system calls of a `systemd-analyze syscall-filter` group, nested groups expanded."""
    result = systemd_analyze("syscall-filter", group)
    assert result.returncode == 0, result.stderr
    names: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= syscall_set(item) if item.startswith("@") else {item}
    return names


def allowed_syscalls() -> set[str]:
    allow, *deny = unit_keys(DAEMON)["SystemCallFilter"]
    assert allow == "@system-service" and all(d.startswith("~") for d in deny)
    allowed = syscall_set(allow)
    for group in " ".join(d.removeprefix("~") for d in deny).split():
        allowed -= syscall_set(group)
    return allowed


ROOT_ONLY = {"fchown"}
"""SQLite gives the journal and WAL files it creates the database file's owner, but only when it
runs as root (the services run as procore-sync)."""


@pytest.fixture(scope="module")
def traced_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """strace output of a `syncer sync --full` (the timers' services) and of a `syncer run` that
    syncs, serves /metrics, reloads on SIGHUP and stops on SIGTERM (the daemon's), against the
    simulator on loopback."""
    folder = tmp_path_factory.mktemp("traced")
    sim_log = folder / "simulator.log"
    with sim_log.open("w") as sim_output:
        sim = subprocess.Popen(
            [sys.executable, "-m", "syncer", "simulate", "--port", "0", "--photos", "30", "--projects", "2"],
            stdout=sim_output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(sim_log, "client_secret: ")
        printed = sim_log.read_text()
        section = printed[printed.index("procore:") :]
        procore = yaml.safe_load(section[: section.index("\n", section.index("client_secret:"))])["procore"]
        port = free_port()
        config = {
            "procore": procore,
            "database": {"url": "sqlite:///state/syncer.db"},
            "mirror": {"root": "mirror"},
            "schedule": {"incremental": {"every": "1s"}, "full": None},
            "http": {"listen": f"127.0.0.1:{port}"},
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        yield {
            "sync": trace(folder, "sync", ["sync", "--full", "--progress", "off"]),
            "run": trace(folder, "run", ["run", "--log-format", "json"], port=port),
        }
    finally:
        sim.terminate()
        sim.wait(timeout=30)


def wait_for(log: Path, pattern: str, count: int = 1) -> None:
    """Until `log` has `count` lines matching `pattern`, whole lines only."""
    deadline = time.monotonic() + 60
    while len(re.findall(f"{pattern}.*\n", log.read_text())) < count:
        assert time.monotonic() < deadline, f"no {pattern!r} in {log.name}: {log.read_text()}"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def trace(folder: Path, name: str, args: list[str], port: int | None = None) -> str:
    output, log = folder / f"{name}.strace", folder / f"{name}.log"
    command = [sys.executable, "-m", "syncer", *args, "--config", str(folder / "config.yaml")]
    with log.open("w") as log_file:
        strace = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", str(output), *command], stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        if port is not None:
            drive_the_daemon(strace, log, port)
        assert strace.wait(timeout=120) == 0, log.read_text()
    finally:
        if strace.poll() is None:  # a failed test: the command first, then strace
            for pid in traced_processes(strace):
                os.kill(pid, signal.SIGKILL)
            strace.kill()
            strace.wait(timeout=30)
    return output.read_text()


def traced_processes(strace: subprocess.Popen[Any]) -> list[int]:
    """The pid of the command strace started, once it has."""
    return [int(pid) for pid in Path(f"/proc/{strace.pid}/task/{strace.pid}/children").read_text().split()]


def drive_the_daemon(strace: subprocess.Popen[Any], log: Path, port: int) -> None:
    """Wait for the daemon's first syncs, ask for /metrics, reload it, stop it."""
    wait_for(log, "sync of ", count=2)
    (pid,) = traced_processes(strace)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
    os.kill(pid, signal.SIGHUP)
    wait_for(log, "configuration reloaded")
    os.kill(pid, signal.SIGTERM)


def syscalls(strace_output: str) -> set[str]:
    return set(re.findall(r"^\d+ +(?:<\.\.\. )?(\w+)[( ]", strace_output, re.M))


@needs_strace
@needs_systemd_analyze
@pytest.mark.parametrize("run", ["sync", "run"])
def test_a_run_makes_only_system_calls_the_services_allow(traced_runs: dict[str, str], run: str) -> None:
    root_only = ROOT_ONLY if os.geteuid() == 0 else set()
    assert syscalls(traced_runs[run]) - allowed_syscalls() - root_only == set()


@needs_strace
@pytest.mark.parametrize("run", ["sync", "run"])
def test_a_run_maps_no_memory_writable_and_executable(traced_runs: dict[str, str], run: str) -> None:
    # MemoryDenyWriteExecute= refuses mmap with PROT_WRITE|PROT_EXEC and any mprotect adding
    # PROT_EXEC: what a JIT or a libffi closure without static trampolines would do.
    assert "MemoryDenyWriteExecute=yes" in (DEPLOY / DAEMON).read_text()
    lines = traced_runs[run].splitlines()
    assert [line for line in lines if re.search(r"\b(pkey_)?mprotect\(.*PROT_EXEC", line)] == []
    assert [line for line in lines if re.search(r"\bmmap\(.*PROT_WRITE\|PROT_EXEC", line)] == []


@needs_strace
@pytest.mark.parametrize("run", ["sync", "run"])
def test_a_run_opens_only_sockets_of_the_families_the_services_allow(
    traced_runs: dict[str, str], run: str
) -> None:
    (allowed,) = unit_keys(DAEMON)["RestrictAddressFamilies"]
    families = set(re.findall(r"\bsocket(?:pair)?\((AF_\w+)", traced_runs[run]))
    assert families and families <= set(allowed.split())


# -- config.example.yaml ----------------------------------------------------------------------


def settings_keys(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, FieldInfo]:
    """Every key of the settings, by dotted path; sections (a field whose type is a settings
    model) are followed into. A union like `str | Every` is one key, not a section."""
    keys: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        keys[prefix + name] = field
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= settings_keys(kind, f"{prefix}{name}.")
    return keys


def example_keys() -> tuple[set[str], set[str]]:
    """The keys config.example.yaml shows live, and those it shows commented out: a line
    `# key: value`, read as if the `# ` were not there (so its indentation places it)."""
    text = (ROOT / "config.example.yaml").read_text()

    def paths(data: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, value in data.items():
            found.add(prefix + key)
            if isinstance(value, dict):
                found |= paths(value, f"{prefix}{key}.")
        return found

    live = paths(yaml.safe_load(text))
    commented: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indentation, key) of the keys the next line may be under
    for line in text.splitlines():
        match = re.match(r"^( *)(# )?( *)([a-z_]+):(?: |$)", line)
        if not match:
            continue
        indent = len(match.group(1)) + len(match.group(3))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([key for _, key in stack] + [match.group(4)])
        stack.append((indent, match.group(4)))
        if match.group(2):
            commented.add(path)
    return live, commented - live


def test_the_example_config_shows_every_settings_key() -> None:
    # A key with a default shows it; a required key shows an example; a key that is off by
    # default (None) may instead be commented out with an example value.
    live, commented = example_keys()
    missing = {
        path
        for path, field in settings_keys().items()
        if path not in live and (field.is_required() or field.default is not None or path not in commented)
    }
    assert missing == set()


def test_the_example_config_shows_only_settings_keys() -> None:
    live, commented = example_keys()
    assert (live | commented) - settings_keys().keys() == set()


def test_the_example_configs_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCORE_CLIENT_ID", "id")
    monkeypatch.setenv("PROCORE_CLIENT_SECRET", "deploy-test-secret")
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    example = parse_settings(data, Path(ETC))
    required = [path.split(".") for path, field in settings_keys().items() if field.is_required()]
    only_required: dict[str, Any] = {}
    for section, *key in required:
        if key:  # a required key of a section (the section itself is required too)
            only_required.setdefault(section, {})[key[0]] = data[section][key[0]]
    defaults = parse_settings(only_required, Path(ETC))

    def flat(model: BaseModel, prefix: str = "") -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                values |= flat(value, f"{prefix}{name}.")
            else:
                values[prefix + name] = value
        return values

    shown, default = flat(example), flat(defaults)
    assert {k: (shown[k], default[k]) for k in shown if shown[k] != default[k]} == {}
