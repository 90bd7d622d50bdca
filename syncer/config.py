"""The YAML configuration file to validated settings.

Every error names the key it is about (`sync.concurrency: ...`) and ends the command with exit
code 2 before anything is touched. `${VAR}` is replaced from the environment, so secrets can stay
out of the file, or from `procore.secrets_file`, a file of NAME=value lines read with the rights of
the user who runs the command (so that `sudo -u procore-sync syncer login` works where only the
service's user and root may read the secrets); relative paths are taken from the config file's
folder, so cron and systemd runs behave like runs from a shell. Commands that never call Procore
(`status`, `verify`) load the file without needing the Procore credentials' variables, so an
operator's shell need not hold them.
"""

from __future__ import annotations

import grp
import math
import os
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from syncer.errors import ConfigError, denied
from syncer.log import REDACT
from syncer.mirror.layout import DEFAULT_LAYOUT, Layout, LayoutError
from syncer.procore.query import ImageFilters, parse_range
from syncer.procore.signin import OUT_OF_BAND, check_redirect_uri

DEFAULT_BUDGET = 20
"""`sync.listing_budget`: the requests one listing may spend, as a multiple of the pages one clean
pass over the window takes; at least `listing.MIN_BUDGET`."""
DEFAULT_MAX_FILE_SIZE = 1 << 30
DEFAULT_DOWNLOAD_TIMEOUT = 3600.0
"""Defaults of settings that the listing and the downloads also use on their own; defined here so
that reading the configuration (`syncer status`) does not load the HTTP client."""
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`30s`, `15m`, `2h`, `1d`, or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 15m or 2h")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 30s, 15m or 2h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def parse_size(value: Any) -> int:
    """`500MB`, `2GB` (powers of 1024), or a plain number of bytes."""
    match = None if isinstance(value, bool) else _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"expected a size like 500MB or 2GB, got {value!r}")
    size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])
    if size < 1:
        raise ValueError("a size must be at least one byte")
    return size


Size = Annotated[int, BeforeValidator(parse_size)]


class UnsetSecret(SecretStr):
    """A Procore credential whose environment variable is not set, in settings loaded for a command
    that never calls Procore. Reading it raises the error loading the file would have raised."""

    def __init__(self, problem: str) -> None:
        super().__init__("")
        self.problem = problem

    def get_secret_value(self) -> str:
        raise ConfigError(self.problem)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnsetSecret) and other.problem == self.problem

    def __hash__(self) -> int:
        return hash(self.problem)


CREDENTIALS = frozenset({"procore.client_id", "procore.client_secret"})
"""The keys only a command that calls Procore needs."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProcoreSettings(_Section):
    api_base: str = "https://api.procore.com"
    login_base: str = "https://login.procore.com"
    web_base: str = "https://app.procore.com"
    """Procore's web app, for links back to Procore in exports (never called)."""
    company_id: int = Field(gt=0)
    auth: Literal["client_credentials", "authorization_code"] = "client_credentials"
    """`client_credentials`: a Developer Managed Service Account (what its company admin gave it);
    `authorization_code`: a person's own sign-in (`syncer login`), seeing what they see."""
    client_id: SecretStr
    client_secret: SecretStr
    redirect_uri: Annotated[str, AfterValidator(check_redirect_uri)] = OUT_OF_BAND
    """With `authorization_code`: the app's redirect URI, out-of-band (paste the code) or a
    loopback address where `syncer login` receives it."""
    request_timeout: Duration = 60.0
    download_timeout: Duration = Field(default=DEFAULT_DOWNLOAD_TIMEOUT, gt=0)
    """The longest one attempt at a photo may take, body included; what is durable of a slower one
    is resumed by the next attempt."""
    retry_attempts: int = Field(default=8, ge=1, le=50)
    """Attempts per request on 5xx, 429 and network errors before the request counts as failed."""
    workers_share: float = Field(default=1.0, gt=0, le=1)
    """The part of the company's rate-limit budget this worker may spend: 1/N with N workers."""
    hourly_limit: int = Field(default=3600, gt=0)
    spike_limit: int = Field(default=25, gt=0)
    spike_window: Duration = Field(default=10.0, gt=0)
    """What Procore allows the company, hourly and per spike window (its documented example:
    3,600 an hour, 25 per 10 s). Only `syncer estimate` and the progress's ETA read them; the
    requests are paced by Procore's own `X-Rate-Limit-*` headers."""
    ca_file: Path | None = None
    """A PEM file of certificate authorities to trust besides the system's: a company proxy's
    that inspects TLS, or a private CA. Relative to the config file."""
    secrets_file: Path | None = None
    """A file of NAME=value lines (the systemd units' `EnvironmentFile=`) whose values fill
    `${NAME}` in this file where the environment does not set NAME. Read by the user running the
    command: it must not be open to every user. Relative to the config file."""

    @field_validator("api_base", "login_base", "web_base")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+/?$", value):
            raise ValueError(f"expected a base URL like https://api.procore.com, got {value!r}")
        return value.rstrip("/")


class DatabaseSettings(_Section):
    url: str = "sqlite:///state/syncer.db"
    lease_ttl: Duration = Field(default=60.0, ge=3, le=3600)
    """With PostgreSQL: how long a worker's leases and claims outlive its last heartbeat."""
    keep_runs: Duration = 90 * 86400.0
    """How long the history of sync runs is kept (each project's last run is kept whatever its
    age); older runs are deleted by the next sync, or hourly by the daemon."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("expected sqlite:///PATH or postgresql://USER@HOST/DB")
        return value

    @field_validator("keep_runs")
    @classmethod
    def _an_hour_at_least(cls, value: float) -> float:
        if value < 3600:
            raise ValueError("expected a duration of an hour or more, like 90d")
        return value


def parse_max_delete(value: Any) -> str:
    """`10%` (of a project's photos) or a plain count."""
    text = str(value).strip()
    number = text.removesuffix("%")
    if isinstance(value, bool) or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"expected a count like 50 or a share like 10%, got {value!r}")
    if text.endswith("%") and float(number) > 100:
        raise ValueError("a share cannot exceed 100%")
    return text


def _yaml_off(value: Any) -> Any:
    """YAML reads a bare `off` as false: take it as the word it looks like. `on` (true) names no
    file convention, so it is refused with the choices."""
    if value is True:
        raise ValueError("on/yes/true names no file: use append (IMG_1.jpg.xmp), replace (IMG_1.xmp) or off")
    return "off" if value is False else value


def _known_group(value: Any) -> Any:
    """A group name or number this machine knows, as text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected a group's name or number")  # noqa: TRY004 - pydantic reports ValueError
    text = str(value)
    if not text.isdigit():
        try:
            grp.getgrnam(text)
        except KeyError:
            raise ValueError(f"no group {text!r} on this machine (getent group {text})") from None
    return text


class MirrorSettings(_Section):
    root: Path = Path("mirror")
    layout: str = DEFAULT_LAYOUT
    on_delete: Literal["keep", "trash", "delete"] = "keep"
    xmp: Annotated[Literal["off", "append", "replace"], BeforeValidator(_yaml_off)] = "off"
    """An XMP sidecar for photo tools beside each photo: `append` names it IMG_1.jpg.xmp (darktable,
    digiKam), `replace` IMG_1.xmp (Lightroom)."""
    max_delete: Annotated[str, BeforeValidator(parse_max_delete)] = "10%"
    """The most photos one run may mark deleted per project without `--force`."""
    max_file_size: Size = DEFAULT_MAX_FILE_SIZE
    """The most bytes taken for a photo whose size Procore does not state (a stated size is the
    limit otherwise)."""
    group: Annotated[str | None, BeforeValidator(_known_group)] = None
    """A group that may read the mirror and its gallery, not change them (site staff): every file
    and folder the syncer makes in the mirror gets it, readable by it and by no one else (0640,
    0750). See docs/sharing.md."""

    def delete_cap(self, known: int) -> int:
        if self.max_delete.endswith("%"):
            return math.ceil(known * float(self.max_delete[:-1]) / 100)
        return int(float(self.max_delete))

    @field_validator("layout")
    @classmethod
    def _valid_layout(cls, value: str) -> str:
        try:
            Layout(value)
        except LayoutError as exc:
            raise ValueError(str(exc)) from None
        return value


class FilterSettings(_Section):
    """The list filters a user may set; `updated_at` is absent because the engine owns it."""

    daily_log_segment_id: list[int] | None = None
    log_date: str | None = None
    private: bool | None = None
    starred: bool | None = None
    location_id: list[int] | None = None
    include_sublocations: bool | None = None
    trade_ids: list[int] | None = None
    projection: Literal["360", "regular"] | None = None
    query: str | None = None
    created_at: str | None = None
    uploader_id: list[int] | None = None
    id: list[int] | None = None

    @field_validator("log_date")
    @classmethod
    def _log_date(cls, value: str | None) -> str | None:
        return None if value is None else parse_range(value, dates_only=True)

    @field_validator("created_at")
    @classmethod
    def _created_at(cls, value: str | None) -> str | None:
        return None if value is None else parse_range(value)

    def to_filters(self) -> ImageFilters:
        return ImageFilters(
            **{f.name: getattr(self, f.name) for f in fields(ImageFilters) if f.name != "updated_at"}
        )


class SyncSettings(_Section):
    projects: Literal["all"] | list[Annotated[int, Field(gt=0)]] = "all"
    project_status: Literal["all", "active"] = "all"
    """Which projects `projects: all` means. Procore lists only active projects unless asked, and
    closed-out ones (kept for warranty, disputes and retention) are what a backup must keep, so
    the default asks for every status. A project named by id is synced whatever its status."""
    concurrency: int = Field(default=8, ge=1, le=64)
    per_page: int = Field(default=1000, ge=1, le=10_000)
    """Photos asked for per listing page. Procore documents no maximum for images and advises at
    most 2,000 in general; the pages are as long as its `Per-Page` answer says (or as the widest
    page seen, where it does not say), so a server that gives 100 costs ten times the requests
    and still lists everything."""
    listing_budget: int = Field(default=DEFAULT_BUDGET, ge=1, le=10_000)
    """The most requests listing one project's window may take, as a multiple of the pages one
    clean pass over it takes (at least 1000): a server whose `Total` never matches what it lists
    leaves that project not proven instead of being split for ever."""
    filters: FilterSettings = FilterSettings()
    overlap: Duration = 300.0
    """How far before the checkpoint each incremental window starts, for clock skew and late writes."""
    lag: Duration = 0.0
    """How far before the run's start (on Procore's clock) each window ends. Photos changed in
    that stretch are left to the next run, so exit 0 then vouches only for older ones."""
    retry_backoff: Duration = Field(default=300.0, gt=0)
    """A failed photo is tried again after this, then twice as long each time, at most a day later."""
    max_duration: Duration | None = None
    """Stop a run cleanly after this long (a nightly window); the next run continues."""


class Every(_Section):
    every: Duration = Field(gt=0)


def _check_cron(value: Any) -> Any:
    if isinstance(value, str):
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"not a cron expression ({exc}); or use {{every: 15m}}") from None
    return value


Schedule = Annotated[str | Every, BeforeValidator(_check_cron)]


class ScheduleSettings(_Section):
    """How often the daemon brings each project up to date (see `syncer/schedule.py`): the
    schedules say how often, not at what clock times, so turns spread over the period."""

    incremental: Schedule = "*/15 * * * *"
    """Each project that changed in the last day comes round once per this period."""
    full: Schedule | None = "0 3 * * 0"
    """The reconcile that finds deleted photos (a `--full` run): each project once per this
    period, spread across it; null turns it off."""
    timezone: str = "UTC"
    max_parallel_projects: int = Field(default=2, ge=1, le=32)
    quiet_slowdown: int = Field(default=8, ge=1, le=64)
    """A project without a change for 30 days comes round once per this many periods (1: every
    project every period)."""
    misfire_grace: Duration | None = None
    """No longer used (a turn that could not start on time runs as soon as it can); accepted so
    that older configurations still load, with a warning."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class NotifySettings(_Section):
    command: str | None = None
    """Run with the event as JSON on stdin (through the shell)."""
    webhook: str | None = None
    """POSTed the event as JSON."""
    timeout: Duration = 30.0

    @field_validator("webhook")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://", value):
            raise ValueError("expected an http:// or https:// URL")
        return value


class HttpSettings(_Section):
    listen: str | None = None
    """`127.0.0.1:9464` serves /healthz, /metrics and /status; off when null."""
    unhealthy_after: int = Field(default=3, ge=1)
    """Consecutive failed runs of one project after which /healthz answers 503."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected HOST:PORT like 127.0.0.1:9464, got {value!r}")
        return value


class GallerySettings(_Section):
    enabled: bool = False
    """Bring the offline gallery (`syncer gallery`) up to date after every sync run and daemon job."""


class Settings(_Section):
    procore: ProcoreSettings
    database: DatabaseSettings = DatabaseSettings()
    mirror: MirrorSettings = MirrorSettings()
    sync: SyncSettings = SyncSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    notify: NotifySettings = NotifySettings()
    http: HttpSettings = HttpSettings()
    gallery: GallerySettings = GallerySettings()

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL for the configured database."""
        url = self.database.url
        if url.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
        return re.sub(r"^postgres(ql)?://", "postgresql+asyncpg://", url)


def _substitute_env(value: Any, path: str, unset_allowed: frozenset[str], env: Mapping[str, str]) -> Any:
    """`value` with every `${VAR}` replaced from `env`; a key in `unset_allowed` whose variable is
    not set becomes an `UnsetSecret`, any other such key is an error."""
    if isinstance(value, dict):
        return {
            k: _substitute_env(v, f"{path}.{k}" if path else str(k), unset_allowed, env)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute_env(v, f"{path}[{i}]", unset_allowed, env) for i, v in enumerate(value)]
    if isinstance(value, str):
        unset = [name for name in _ENV_RE.findall(value) if name not in env]
        if unset:
            problem = f"{path}: environment variable {unset[0]} is not set"
            if path in unset_allowed:
                return UnsetSecret(problem)
            raise ConfigError(problem)
        return _ENV_RE.sub(lambda match: env[match.group(1)], value)
    return value


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_secrets(path: Path, *, needed: bool) -> dict[str, str]:
    """The NAME=value lines of `procore.secrets_file` (blank lines and # comments skipped, a value
    in single or double quotes taken without them), each value registered for redaction. Without
    `needed` (a command that never calls Procore), a file this user cannot read is no error. No
    message quotes a line: it holds a secret."""
    try:
        with path.open(encoding="utf-8") as fh:
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        if not needed:
            return {}
        if isinstance(exc, FileNotFoundError):
            raise ConfigError(f"procore.secrets_file: no such file: {path}") from None
        if isinstance(exc, PermissionError):
            raise ConfigError(
                f"procore.secrets_file: {denied(exc)}: let this user read it (chgrp it to the user's group, "
                "chmod 640)"
            ) from None
        raise ConfigError(f"procore.secrets_file: cannot read {path}: {exc}") from None
    if mode & 0o007:
        raise ConfigError(
            f"procore.secrets_file: {path} is open to every user (mode {mode:04o}): chmod o-rwx {path}"
        )
    secrets: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not _NAME_RE.fullmatch(name.strip()):
            raise ConfigError(f"procore.secrets_file: line {number} of {path} is not NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        secrets[name.strip()] = value
        REDACT.add(value)
    return secrets


def _secrets_file(data: dict[str, Any], folder: Path) -> Path | None:
    procore = data.get("procore")
    raw = procore.get("secrets_file") if isinstance(procore, dict) else None
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError("procore.secrets_file: expected the path of a file of NAME=value lines")
    return folder / Path(raw).expanduser()


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling and config.example.yaml)"
    elif error["type"] == "missing":
        message = "required key is missing"
    return f"{key}: {message.removeprefix('Value error, ')}"


def _resolve_paths(settings: Settings, folder: Path) -> Settings:
    root = settings.mirror.root.expanduser()
    mirror = settings.mirror.model_copy(update={"root": (folder / root).resolve()})
    url = settings.database.url
    if url.startswith("sqlite:///"):
        db_path = Path(url.removeprefix("sqlite:///")).expanduser()
        url = "sqlite:///" + str((folder / db_path).resolve())
    database = settings.database.model_copy(update={"url": url})
    procore = settings.procore
    if procore.ca_file is not None:
        procore = procore.model_copy(update={"ca_file": _ca_file(folder / procore.ca_file.expanduser())})
    if procore.secrets_file is not None:
        procore = procore.model_copy(
            update={"secrets_file": (folder / procore.secrets_file.expanduser()).resolve()}
        )
    return settings.model_copy(update={"mirror": mirror, "database": database, "procore": procore})


def _ca_file(path: Path) -> Path:
    """The CA file, resolved, once it has been read as certificates."""
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"procore.ca_file: no such file: {path}") from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(f"procore.ca_file: {path} holds no readable certificate ({reason})") from None
    return path.resolve()


def parse_settings(data: Any, folder: Path, *, need_credentials: bool = True) -> Settings:
    """Validate an already-loaded YAML document; relative paths resolve against `folder`.

    Without `need_credentials` (a command that never calls Procore), a Procore credential whose
    environment variable is not set is an `UnsetSecret` instead of an error; everything else is
    checked as always."""
    if data is None:
        raise ConfigError("the configuration is empty; see config.example.yaml")
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping of sections (procore:, mirror:, ...)")
    secrets_file = _secrets_file(data, folder)
    env = (
        os.environ
        if secrets_file is None
        else {**read_secrets(secrets_file, needed=need_credentials), **os.environ}
    )
    data = _substitute_env(data, "", frozenset() if need_credentials else CREDENTIALS, env)
    filters = (data.get("sync") or {}).get("filters") if isinstance(data.get("sync"), dict) else None
    if isinstance(filters, dict) and "updated_at" in filters:
        raise ConfigError("sync.filters.updated_at: not allowed; the syncer sets it from the checkpoint")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors())) from None
    # Secrets never reach a log line or an error message, wherever the text comes from.
    if not isinstance(settings.procore.client_secret, UnsetSecret):
        REDACT.add(settings.procore.client_secret.get_secret_value())
    if password := urlsplit(settings.database.url).password:
        REDACT.add(password)
    return _resolve_paths(settings, folder)


def load_settings(path: Path, *, need_credentials: bool = True) -> Settings:
    """The settings in the YAML file at `path` (see `parse_settings` for `need_credentials`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    return parse_settings(data, path.resolve().parent, need_credentials=need_credentials)
