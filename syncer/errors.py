"""Exit codes and the error types that cross module boundaries.

Every failure a user can meet is one of these, so the CLI can turn it into one clear line and a
documented exit code instead of a traceback.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from enum import IntEnum
from pathlib import Path

from syncer.log import REDACT


class ExitCode(IntEnum):
    OK = 0
    """Everything listed was mirrored and verified."""
    INCOMPLETE = 1
    """Some photos or projects failed; the summary names them. Safe to run again. Also a machine
    that refused the work (a full disk, a file another user owns): one line names it."""
    USAGE = 2
    """Bad command line or configuration, a company or project the account cannot see, a missing
    extra, or a command that writes the mirror run by another user than its owner; nothing was
    synced."""
    AUTH = 3
    """Procore refused the credentials."""
    LOCKED = 4
    """Another run holds the lock on this database and mirror."""
    NO_MIRROR = 5
    """The mirror root is not the mirror the database knows (a disk or share not mounted, another
    disk in its place); nothing was written."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C or a signal; what was committed stays committed."""


class SyncerError(Exception):
    """An error with a message fit for the user; `exit_code` says how the CLI ends. Its text is
    scrubbed of secrets here, where it is made, before anything can store or show it."""

    exit_code = ExitCode.INCOMPLETE

    def __init__(self, *args: object) -> None:
        super().__init__(*(REDACT(arg) if isinstance(arg, str) else arg for arg in args))


class FatalError(SyncerError):
    """Ends the whole run at once instead of failing one photo: the credentials were refused, or
    this worker lost its lease."""


class LocalFault(FatalError):
    """This machine cannot do the work (a full or read-only disk, a folder it may not write): the
    run stops, and no photo is blamed for it."""


LOCAL_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EIO,
        errno.EMFILE,
        errno.ENFILE,
    }
)
"""What an OSError says of the machine rather than of one photo."""


def local_fault(exc: OSError, what: str = "the mirror") -> LocalFault | None:
    """One line naming the condition and the path, if `exc` is the machine's fault."""
    if exc.errno not in LOCAL_ERRNOS:
        return None
    if exc.errno in (errno.EACCES, errno.EPERM):
        problem = denied(exc)
    else:
        problem = os.strerror(exc.errno or 0) + (f" ({exc.filename})" if exc.filename else "")
    return LocalFault(
        f"{what}: {problem}; the run stopped and no photo was marked failed: fix it, then run again"
    )


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def denied(exc: OSError) -> str:
    """What a refused file operation needs a person to know: the path, whose it is, and who asked.
    A file not made yet is refused by its folder, so the nearest one that exists is named."""
    me = user_name(os.geteuid())
    path = Path(os.fsdecode(exc.filename)) if exc.filename else None
    for place in (path, *path.parents) if path else ():
        try:
            found = os.lstat(place)
        except OSError:
            continue
        return (
            f"permission denied: {place} belongs to {user_name(found.st_uid)} (group "
            f"{group_name(found.st_gid)}, mode {stat.S_IMODE(found.st_mode):04o}), and this syncer runs "
            f"as {me}"
        )
    return (
        f"{exc.strerror or 'permission denied'}{f' ({path})' if path else ''}, and this syncer runs as {me}"
    )


class NotTheOwner(SyncerError):
    """A command that writes the mirror, run by another user than the mirror's owner: whatever it
    made there (a lock, a folder, a page) would be that user's, and the owner's next run could not
    use it. Refused before anything is opened."""

    exit_code = ExitCode.USAGE


class MirrorMissing(FatalError):
    """The mirror root does not hold the mirror the database records: writing there would report
    an empty folder as a complete backup, or fill the disk under a mount point."""

    exit_code = ExitCode.NO_MIRROR


class ConfigError(SyncerError):
    exit_code = ExitCode.USAGE


class NothingYet(SyncerError):
    """A command that only reads found no database: nothing has been synced here yet. Said
    plainly, and nothing is created (a `status` that made an empty database would hide a
    `database.url` that points at the wrong place)."""

    exit_code = ExitCode.OK


class LockedError(SyncerError):
    exit_code = ExitCode.LOCKED


class DatabaseError(FatalError):
    """The database could not be reached or refused a statement; nothing is lost by running again."""


def database_error(exc: BaseException, url: str | None = None, hint: str | None = None) -> DatabaseError:
    """One line for a database failure: the driver's own message, the password left out, and
    what is known of the cause."""
    reason = getattr(exc, "orig", None) or exc
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    where = f" {url}" if url else ""
    cause = f"; {hint}" if hint else ""
    return DatabaseError(f"database{where}: {type(reason).__name__}: {text}{cause}")
