"""The mirror knows it is itself: an id in `<mirror>/.syncer/mirror-id`, recorded in the database.

A NAS share that did not mount leaves an empty folder at the mirror's path. A run that took it
for the mirror would report "nothing changed" over an empty backup, or download everything onto
the disk under the mount point. So before anything is written under the root, the id there is
compared with the one the database recorded:

- the same id: this is the mirror;
- an id and none recorded (a new or lost database): the id is recorded, and the files there are
  adopted as usual;
- no id, and the database knows no mirrored photo: a new mirror, whose id is written and recorded;
- no id, and the database knows mirrored photos: refused (`MirrorMissing`, exit 5), unless some of
  those photos are there (a mirror made before ids existed: it gets one);
- another id: refused, another disk is mounted there.

Starting over on a new empty disk is a person's decision: `syncer sync --new-mirror` records the
folder as the mirror and checks every recorded file (a `stat`) so that what is missing is fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path

from syncer.errors import MirrorMissing
from syncer.mirror.files import MARKER, STATE_DIR, fsync_dir, read_marker, state_folder, unusable_root
from syncer.store import Store
from syncer.words import plural

SAMPLE = 20
"""Recorded photos looked for in a mirror without an id, before it is taken for an unmounted one."""


def write_marker(root: Path) -> str:
    """The mirror's id: a new one written durably at `root` (temp file, fsync, link into place,
    fsync of the folder), or the one another process put there first. Linked, not renamed: two
    runs starting on a new mirror at once must end up with one id, not each with its own."""
    folder = root / STATE_DIR
    state_folder(folder)
    mirror_id = secrets.token_hex(16)
    temp = folder / f"mirror-id.{mirror_id}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, f"{mirror_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, root / MARKER)
    except FileExistsError:
        theirs = read_marker(root)
        if theirs is None:  # gone again at once: not a mirror to write to
            raise MirrorMissing(f"{root / MARKER} came and went while this run started: run again") from None
        mirror_id = theirs
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
    fsync_dir(folder)
    return mirror_id


def _present(root: Path, paths: list[str]) -> bool:
    """Whether any of these recorded photos is a file under `root` (no link followed)."""
    for rel in paths:
        with contextlib.suppress(OSError, ValueError):
            if stat.S_ISREG(os.lstat(root / rel).st_mode):
                return True
    return False


async def ensure_mirror(store: Store, root: Path, *, new: bool = False, create: bool = True) -> str | None:
    """Check that `root` is the mirror the database knows before anything writes there; its id
    (None where there is none and `create` is off). A run keeps it in `MirrorFS.identity`, so each
    project run checks it again. `new`: a person said this folder is the mirror from now on.
    `create`: off for a command that only reads (verify), which gives a mirror no id."""
    recorded = await store.mirror()  # first: another run starting now records only after its marker
    marker = await asyncio.to_thread(read_marker, root)
    if marker is not None and (new or recorded is None or recorded[0] == marker):
        if recorded is None or recorded[0] != marker:
            await store.record_mirror(marker, str(root), datetime.now(UTC))
        return marker
    if not new:
        count, sample = await store.mirrored_sample(SAMPLE)
        if marker is not None:
            assert recorded is not None
            raise MirrorMissing(
                f"mirror.root {root} holds another mirror than the one this database knows (recorded at "
                f"{recorded[1]}, {plural(count, 'photo')}): is another disk mounted there? Nothing was "
                "written. If this folder is the mirror from now on, run syncer sync --new-mirror"
            )
        if recorded is not None or (count and not await asyncio.to_thread(_present, root, sample)):
            state = (
                "does not exist" if not await asyncio.to_thread(os.path.lexists, root) else f"has no {MARKER}"
            )
            raise MirrorMissing(
                f"mirror.root {root} {state}, but this database knows {count:,} mirrored photos there: "
                "is a disk or network share not mounted? Nothing was written. To start the mirror over "
                "in this folder, run syncer sync --new-mirror"
            )
    if not create:
        return None
    try:
        mirror_id = await asyncio.to_thread(write_marker, root)
    except OSError as exc:
        raise unusable_root(root, exc) from None
    await store.record_mirror(mirror_id, str(root), datetime.now(UTC))
    return mirror_id
