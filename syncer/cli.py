"""The `syncer` command. Every failure ends as one clear line and a documented exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import syncer
from syncer.errors import ConfigError, ExitCode, LocalFault, NothingYet, SyncerError, database_error, denied
from syncer.log import REDACT, setup_logging, terminal_text
from syncer.words import plural

if TYPE_CHECKING:
    from syncer.report import Progress
    from syncer.result import RunSummary

log = logging.getLogger("syncer")
T = TypeVar("T")

EPILOG = """exit codes:
  0  everything listed is mirrored and verified
  1  some photos or projects failed (the summary names them); safe to run again; or the
     machine refused the work (a full disk, a file of another user's: the line names it)
  2  usage or configuration error, or Procore does not show the configured company or
     projects to this account, or a needed extra is not installed, or a command that
     writes the mirror was run by another user than its owner; nothing was synced
  3  Procore refused the credentials
  4  another syncer is working on the same mirror
  5  the mirror root is not the mirror the database knows (a disk or share not
     mounted?); nothing was written (syncer sync --new-mirror starts over there)
  130 interrupted (Ctrl-C or SIGTERM); what was installed is recorded
"""


def say(text: str, *, error: bool = False) -> None:
    """Print for a person: on stdout, or an error's one line on stderr. What came from Procore
    (names, error pages) is shown escaped, never obeyed by the terminal."""
    print(terminal_text(text, lines=not error), file=sys.stderr if error else sys.stdout, flush=True)


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """Run a one-shot command. SIGTERM (what systemd, `timeout` and most schedulers send) stops
    it as Ctrl-C does: the work in progress is cancelled, every file already installed is
    recorded, the run is marked interrupted, and the command exits 130."""

    async def stoppable() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel, "SIGTERM")  # named in the run's summary
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(stoppable())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


@contextlib.contextmanager
def _kept_when_interrupted(summary: RunSummary) -> Iterator[None]:
    """Around a sync that fills in `summary`: once it was interrupted, its summary (what it did,
    what it leaves) is printed instead of the one line `main` says, and exits 130 all the same."""
    try:
        yield
    except KeyboardInterrupt:
        if summary.interrupted is None:  # stopped before the run began: nothing to sum up
            raise


def _config_path(args: argparse.Namespace) -> Path:
    """--config, then $SYNCER_CONFIG, then the first of the user's and the system's config files
    that exists (as `--help` says)."""
    raw = args.config or os.environ.get("SYNCER_CONFIG")
    if raw:
        return Path(raw)
    home = os.environ.get("XDG_CONFIG_HOME") or Path(USER_CONFIG).expanduser().parent.parent
    searched = [Path(home) / "procore-photo-sync" / "config.yaml", SYSTEM_CONFIG]
    for path in searched:
        if path.is_file():
            return path
    raise ConfigError(
        f"no configuration: give --config PATH, set SYNCER_CONFIG, or create {searched[0]} (yours) "
        f"or {searched[1]} (the system's)"
    )


def _load(args: argparse.Namespace) -> Any:
    from syncer.config import load_settings

    return load_settings(_config_path(args))


def _progress(args: argparse.Namespace) -> Progress:
    from syncer.report import make_progress

    if args.quiet:
        return make_progress(enabled=False)
    return make_progress(enabled=None if args.progress == "auto" else args.progress == "on")


def _summarised(args: argparse.Namespace, summary: RunSummary) -> int:
    """Print a run's summary (as one JSON object when the logs are JSON, so that a service's
    journal holds nothing but JSON lines), unless -q was given and the run is complete: cron
    mails what a job prints, and a quiet job should mail only what needs a person."""
    from syncer.report import render_summary, render_summary_json

    if not (args.quiet and summary.exit_code == ExitCode.OK):
        say(REDACT((render_summary_json if args.log_format == "json" else render_summary)(summary)))
    return int(summary.exit_code)


def cmd_sync(args: argparse.Namespace) -> int:
    from syncer.result import RunSummary
    from syncer.runner import run_sync

    summary = RunSummary()
    with _kept_when_interrupted(summary):
        run_stoppable(
            run_sync(
                _load(args),
                project_ids=args.project or None,
                full=args.full,
                new_mirror=args.new_mirror,
                dry_run=args.dry_run,
                force=args.force,
                progress=_progress(args),
                summary=summary,
            )
        )
    return _summarised(args, summary)


def cmd_estimate(args: argparse.Namespace) -> int:
    from syncer.estimate import estimate, render_estimate

    result = run_stoppable(estimate(_load(args)))
    say(REDACT(json.dumps(result.figures(), indent=2) if args.json else render_estimate(result)))
    return int(ExitCode.INCOMPLETE if result.errors else ExitCode.OK)


def cmd_status(args: argparse.Namespace) -> int:
    from syncer.config import load_settings
    from syncer.status import render_status, status_document

    settings = load_settings(_config_path(args), need_credentials=False)  # reads the database only
    try:
        document = asyncio.run(status_document(settings, failures_limit=None))  # every failed photo
    except NothingYet as nothing:
        if not args.json:
            raise
        say(f"syncer: {nothing}", error=True)  # and a document a script can read as it reads any
        document = {"mirror": str(settings.mirror.root), "projects": []}
    if args.project:
        known = {p["id"] for p in document["projects"]}
        if unknown := sorted(set(args.project) - known):
            raise ConfigError(
                f"--project {unknown[0]}: no such project in the database (it knows "
                f"{', '.join(str(i) for i in sorted(known)) or 'none yet'})"
            )
        document["projects"] = [p for p in document["projects"] if p["id"] in args.project]
    say(json.dumps(document, indent=2) if args.json else render_status(document))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from syncer.daemon import Daemon

    daemon = Daemon(_config_path(args))
    return asyncio.run(daemon.run())


def cmd_verify(args: argparse.Namespace) -> int:
    from syncer.config import load_settings
    from syncer.verify import render_verify, verify

    if args.move_strays and args.project:
        raise ConfigError("--move-strays looks at the whole mirror; it cannot be combined with --project")
    settings = load_settings(_config_path(args), need_credentials=False)  # reads the database only
    checking = verify(
        settings,
        project_ids=args.project or None,
        fix=args.fix,
        move_strays=args.move_strays,
        config_path=_config_path(args),
    )
    try:
        report = run_stoppable(checking)
    except NothingYet as nothing:  # nothing could be checked: not a mirror that matches
        say(f"syncer: {nothing}: nothing to verify", error=True)
        return int(ExitCode.INCOMPLETE)
    say(render_verify(report))
    return int(ExitCode.OK if report.matches else ExitCode.INCOMPLETE)


def cmd_retry_failed(args: argparse.Namespace) -> int:
    from syncer.result import RunSummary
    from syncer.runner import run_sync

    summary = RunSummary()
    with _kept_when_interrupted(summary):
        run_stoppable(
            run_sync(
                _load(args),
                project_ids=args.project or None,
                retry_failed=True,
                progress=_progress(args),
                summary=summary,
            )
        )
    return _summarised(args, summary)


def cmd_export(args: argparse.Namespace) -> int:
    from syncer.config import load_settings
    from syncer.export import export_csv

    settings = load_settings(_config_path(args), need_credentials=False)  # reads the database only
    count = asyncio.run(export_csv(settings, args.csv, project_ids=args.project or None))
    if args.csv != "-":
        say(f"{plural(count, 'photo')} listed in {args.csv}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from syncer.login import login

    say(REDACT(run_stoppable(login(_load(args), say=say))))
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from syncer.login import logout

    say(REDACT(run_stoppable(logout(_load(args)))))
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from syncer.config import load_settings
    from syncer.gallery import build_gallery, render_report

    settings = load_settings(_config_path(args), need_credentials=False)  # reads the database only
    say(render_report(run_stoppable(build_gallery(settings, args.project or None))))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from syncer.store import Store

    settings = _load(args)

    async def upgrade() -> None:
        store = await Store.open(settings.database_url)
        await store.close()

    asyncio.run(upgrade())
    say("database schema is up to date")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from syncer.simulator.cli import serve

    return asyncio.run(serve(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from syncer.simulator.cli import demo

    return run_stoppable(demo(args))


USER_CONFIG = "~/.config/procore-photo-sync/config.yaml"
"""The user's config file (under $XDG_CONFIG_HOME when that is set)."""
SYSTEM_CONFIG = Path("/etc/procore-photo-sync/config.yaml")
"""The system's config file, where the server setup in docs/operations.md puts it."""
CONFIG_HELP = (
    "the YAML configuration; default: $SYNCER_CONFIG, then "
    f"{USER_CONFIG} ($XDG_CONFIG_HOME/procore-photo-sync/config.yaml when set), then {SYSTEM_CONFIG}"
)


def _global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """-v, -q, --log-format and --config, taken before the command and after it. The top-level
    parser holds their defaults; a command's parser has none of its own (SUPPRESS), so that it
    does not undo what was given before the command. Its -v counts separately and is added."""
    keep = argparse.SUPPRESS if after_command else None
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "-v",
        "--verbose",
        dest="more_verbose" if after_command else "verbose",
        action="count",
        default=keep or 0,
        help="more detail in the log",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=keep or False,
        help="only warnings and errors: no progress, and a sync that ends with exit 0 prints nothing",
    )
    group.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=keep or "text",
        help="json writes one JSON object per line, for services",
    )
    group.add_argument("--config", "-c", default=keep, metavar="PATH", help=CONFIG_HELP)


def _command(
    sub: Any, name: str, *, summary: str, description: str, **kwargs: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description, **kwargs)
    _global_options(parser, after_command=True)
    return parser


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="progress bar (auto: only on a terminal, and not with -q)",
    )


def _projects_option(parser: argparse.ArgumentParser, what: str = "only this project (repeatable)") -> None:
    parser.add_argument("--project", type=int, action="append", metavar="ID", help=what)


def _add_sync(sub: Any) -> None:
    sync = _command(
        sub,
        "sync",
        summary="sync the mirror once (for cron)",
        description="List what changed in Procore since the last run, download it into the mirror, "
        "record it, and print a summary. Safe to stop and run again at any time.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _projects_option(sync, "sync only this project (repeatable); default: sync.projects from the config")
    sync.add_argument(
        "--full",
        action="store_true",
        help="list everything, ignoring the checkpoint, and fetch any recorded file missing from the mirror",
    )
    sync.add_argument(
        "--new-mirror",
        action="store_true",
        help="make mirror.root the mirror from now on (a new disk): a full run that fetches every recorded "
        "photo it does not find there. Without it, a mirror root that is not the recorded mirror is refused",
    )
    sync.add_argument(
        "--dry-run", action="store_true", help="list and report what would change; write nothing"
    )
    sync.add_argument(
        "--force",
        action="store_true",
        help="apply deletions found by --full even beyond mirror.max_delete (check they are real first)",
    )
    _progress_option(sync)
    sync.set_defaults(func=cmd_sync)


def _add_run(sub: Any) -> None:
    _command(
        sub,
        "run",
        summary="run as a service on the configured schedule",
        description="Keep the mirror current as a service: sync on the config's schedule, serve "
        "/healthz, /metrics and /status where http.listen says, reload the config on SIGHUP, stop "
        "cleanly on SIGTERM.",
    ).set_defaults(func=cmd_run)


def _add_estimate(sub: Any) -> None:
    estimate = _command(
        sub,
        "estimate",
        summary="count the company's photos and what syncing them costs at the rate budget",
        description="Count, with Procore's own totals (two requests a project), the configured company's "
        "projects and photos, and print the requests and the time that a first backfill and a day of "
        "incremental runs (schedule.incremental) need at the rate budget (procore.hourly_limit, "
        "procore.spike_limit per procore.spike_window, times procore.workers_share), with file downloads "
        "counted against it and not. Writes nothing.",
        epilog="exit codes: 0 counted; 1 some projects could not be counted (named); 2 configuration; "
        "3 credentials refused",
    )
    estimate.add_argument("--json", action="store_true", help="machine-readable output")
    estimate.set_defaults(func=cmd_estimate)


def _add_status(sub: Any) -> None:
    status = _command(
        sub,
        "status",
        summary="show what the mirror holds, per project",
        description="Show, from the database alone, each project's photos, checkpoint and last run, "
        "and the photos that failed with their error and next try. Never calls Procore.",
    )
    _projects_option(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)


def _add_verify(sub: Any) -> None:
    verify = _command(
        sub,
        "verify",
        summary="re-hash the mirror against the database (exit 0 only if it matches)",
        description="Re-hash every photo in the mirror against the database and check its sidecar. "
        "Lists photos missing or changed, sidecars missing or bad, and unexpected files: files the "
        "database knows nothing of (looked for only without --project), never touched unless "
        "--move-strays is given. Exit 0 only when the mirror matches once this run is done: sidecars "
        "--fix wrote and files --move-strays moved count as mended, photos --fix queued only after the "
        "next `syncer sync`. Needs no Procore credentials.",
    )
    _projects_option(verify)
    verify.add_argument(
        "--fix",
        action="store_true",
        help="write missing or bad sidecars from the database, and queue missing or changed photos "
        "for the next `syncer sync` to download",
    )
    verify.add_argument(
        "--move-strays",
        action="store_true",
        help="move unexpected files (the database knows nothing of them) to "
        "MIRROR/.trash/strays/DATE/ under the same paths; without it they are only listed",
    )
    verify.set_defaults(func=cmd_verify)


def _add_retry_failed(sub: Any) -> None:
    retry = _command(
        sub,
        "retry-failed",
        summary="retry failed photos now, then sync",
        description="Make every failed photo due now instead of at its backoff time, then run a sync.",
    )
    _projects_option(retry)
    _progress_option(retry)
    retry.set_defaults(func=cmd_retry_failed)


def _add_export(sub: Any) -> None:
    export = _command(
        sub,
        "export",
        summary="write an index of the mirror's photos as CSV",
        description="Write one row per photo in the mirror (project, album, path, id, file name, dates, "
        "uploader, location, trades, description, flags, size, SHA-256, a link to Procore) as CSV for "
        "spreadsheet programs: UTF-8 with a byte-order mark, and no cell that could run as a formula. "
        "Reads only the database.",
    )
    export.add_argument(
        "--csv", required=True, metavar="PATH", help="where to write it (- for standard output)"
    )
    _projects_option(export)
    export.set_defaults(func=cmd_export)


def _add_login(sub: Any) -> None:
    _command(
        sub,
        "login",
        summary="sign in to Procore as a person (procore.auth: authorization_code)",
        description="Sign in to Procore as yourself: prints Procore's authorize address, then takes the "
        "code Procore shows (or receives it on procore.redirect_uri when that is a loopback address), "
        "and saves the sign-in in the mirror's .syncer/procore-login.json, readable by you alone. Syncs "
        "then see exactly what you can see in Procore. Run it again when Procore stops accepting it.",
    ).set_defaults(func=cmd_login)
    _command(
        sub,
        "logout",
        summary="forget the saved Procore sign-in (and revoke it in Procore)",
        description="Ask Procore to revoke the saved sign-in, then delete it from the mirror's .syncer/.",
    ).set_defaults(func=cmd_logout)


def _add_gallery(sub: Any) -> None:
    gallery = _command(
        sub,
        "gallery",
        summary="build the offline gallery (index.html) in the mirror",
        description="Build or bring up to date a static gallery inside the mirror: index.html at its root "
        "(projects, counts, dates), a page per project with thumbnails, search and filters, and index.csv. "
        "It opens from file:// with no server and no network. Only what changed since the last build "
        "is made again. Reads only the database and the mirror.",
    )
    _projects_option(gallery, "only this project's thumbnails and page (repeatable)")
    gallery.set_defaults(func=cmd_gallery)


def _add_db(sub: Any) -> None:
    db = _command(sub, "db", summary="database maintenance", description="Database maintenance.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    _command(
        db_sub,
        "upgrade",
        summary="apply schema migrations (also done on start)",
        description="Bring the database's schema up to date. Every command does this on start; this "
        "one does only that, for a deploy step.",
    ).set_defaults(func=cmd_db_upgrade)


def _add_simulate(sub: Any) -> None:
    sim = _command(
        sub,
        "simulate",
        summary="serve the built-in Procore simulator on 127.0.0.1",
        description="Serve a simulated Procore company (API, OAuth and object store) on 127.0.0.1, with "
        "the API's awkward parts (rate limits, expiring signed URLs, unstable order among ties), to try "
        "the syncer without a Procore account. Prints a config section that points at it.",
    )
    sim.add_argument("--port", type=int, default=8470, help="API port (0 picks a free one)")
    sim.add_argument("--store-port", type=int, default=0, help="object-store port (default: a free one)")
    sim.add_argument("--photos", type=int, default=500, help="photos in the company, over all projects")
    sim.add_argument("--projects", type=int, default=3, help="projects in the company")
    sim.add_argument("--seed", type=int, default=1, help="the same seed serves the same company")
    sim.add_argument("--error-rate", type=float, default=0.0, help="share of answers that are 5xx")
    sim.add_argument("--cut-rate", type=float, default=0.0, help="share of file bodies cut short")
    sim.add_argument("--spike-limit", type=int, default=2000, help="requests allowed per spike window")
    sim.add_argument("--spike-window", type=float, default=10.0, help="seconds of the spike window")
    sim.add_argument("--hourly-limit", type=int, default=100_000, help="requests allowed per hour")
    sim.add_argument(
        "--hourly-window",
        type=float,
        default=3600.0,
        help="seconds of the hourly window (shorter: time scaled)",
    )
    sim.add_argument(
        "--free-file-requests",
        action="store_true",
        help="requests to the storage host (file URLs) do not count against the rate limit",
    )
    sim.add_argument("--photo-size", type=int, default=None, help="bytes per photo (default: varied)")
    sim.add_argument(
        "--latency", type=float, default=0.0, help="seconds before each API and storage-host answer"
    )
    sim.add_argument(
        "--store-latency", type=float, default=0.0, help="seconds before each object-store answer"
    )
    sim.add_argument("--bandwidth", type=float, default=None, help="bytes per second per file answer")
    sim.add_argument(
        "--max-per-page",
        type=int,
        default=100,
        help="largest page served (100, as some tools assume; Procore documents no maximum)",
    )
    sim.add_argument(
        "--tied",
        type=int,
        default=0,
        help="photos of the first project sharing one second of created_at and updated_at (a bulk import)",
    )
    sim.add_argument(
        "--whole-seconds",
        action="store_true",
        help="store times in whole seconds (default: finer, shown in whole seconds, as Procore does)",
    )
    sim.add_argument(
        "--range-end",
        choices=["inclusive", "exclusive"],
        default="inclusive",
        help="whether a created_at/updated_at range holds its end (unknown for Procore)",
    )
    sim.set_defaults(func=cmd_simulate)


def _add_demo(sub: Any) -> None:
    demo = _command(
        sub,
        "demo",
        summary="sync a simulated company into a folder",
        description="Start the simulator and run a real sync from it into a folder: what `make demo` does.",
    )
    demo.add_argument("--dir", default="demo-mirror", help="where the mirror and its state go")
    demo.add_argument("--photos", type=int, default=500, help="photos in the simulated company")
    _progress_option(demo)
    demo.set_defaults(func=cmd_demo)


COMMANDS = (
    _add_sync,
    _add_run,
    _add_estimate,
    _add_status,
    _add_verify,
    _add_retry_failed,
    _add_export,
    _add_login,
    _add_gallery,
    _add_db,
    _add_simulate,
    _add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncer",
        description="Keep a verified local mirror of your Procore project photos.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {syncer.__version__}")
    _global_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, its global options merged. A word the command does not take is refused
    with the command's own usage, not the top-level one."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = _chosen(parser, args)
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    args.verbose += getattr(args, "more_verbose", 0)
    if args.verbose and args.quiet:
        command.error("-q and -v contradict each other: give one")
    return args


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost command's parser that `args` came from (`db upgrade`'s, not `db`'s)."""
    for name in (args.command, getattr(args, "db_command", None)):
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands or name is None:
            break
        parser = commands[0].choices[name]
    return parser


def _not_a_bug(exc: Exception) -> SyncerError | None:
    """What an error from below that is no SyncerError means, when it is not a bug: the database
    went away or refused; a file or folder this user may not use (another user's), named with its
    owner."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        return database_error(exc)
    if isinstance(exc, PermissionError):
        return LocalFault(denied(exc))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet, fmt=args.log_format)
    try:
        return int(args.func(args))
    except SyncerError as exc:
        say(f"syncer: {REDACT(str(exc))}", error=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        say("syncer: interrupted; what was committed stays committed", error=True)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # `syncer ... | head`: the reader has what it wanted; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)
    except Exception as exc:  # a bug: say so in one line; -v shows where
        if (error := _not_a_bug(exc)) is not None:
            say(f"syncer: {REDACT(str(error))}", error=True)
            return int(error.exit_code)
        if args.verbose:
            log.exception("unexpected error")
        say(
            f"syncer: unexpected error: {type(exc).__name__}: {REDACT(str(exc))} "
            "(run again with -v for details, and please report it)",
            error=True,
        )
        return int(ExitCode.INCOMPLETE)
