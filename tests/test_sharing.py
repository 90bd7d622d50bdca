"""One owner for the mirror, and sharing it read-only: real `syncer` processes run as other users
(root runs the tests; each test that needs it is skipped otherwise).

The mirror belongs to the user who owns its root, as the service's user owns /srv/procore-photos.
A command that would write there refuses any other user, root included, before it opens anything;
a file another user left there is one line naming it and its owner. `procore.secrets_file` lets
that user read the secrets with its own rights (`sudo -u procore-sync syncer login`).
`mirror.group` gives site staff read access to the mirror and its gallery, and no more."""

from __future__ import annotations

import functools
import grp
import json
import os
import pwd
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncer.errors import ExitCode
from syncer.simulator import Simulator
from tests.conftest import write_config
from tests.test_cli import Run, syncer
from tests.test_signin import login

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running syncer as other users needs root")

OWNER = "nobody"
"""The mirror's owner, as procore-sync is the units' (any user but root will do)."""
STAFF = "staff"
"""The group of the site staff who may read the mirror."""
READER, STRANGER = "daemon", "www-data"
"""A member of the staff group, and a user who is not."""
PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_secrets_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROCORE_CLIENT_ID", "PROCORE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)


def as_user(user: str, *, groups: tuple[str, ...] = (), umask: int = 0o027) -> dict[str, Any]:
    """How to start a process as `user`, with its own group, these supplementary groups (and not
    the test's), and the systemd units' umask unless told."""
    return {
        "user": user,
        "group": pwd.getpwnam(user).pw_gid,
        "extra_groups": [grp.getgrnam(g).gr_gid for g in groups],
        "umask": umask,
    }


@functools.cache
def python_for_all() -> tuple[str, dict[str, str]]:
    """A Python any user may run, with this one's packages, and the environment it needs: this
    one, or where others may not reach it (pyenv keeps it under /root, mode 0700) the system's own
    of the same version, given this one's packages by PYTHONPATH."""
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    packages = os.pathsep.join([str(PROJECT), *site.getsitepackages()])
    for python, env in ((sys.executable, {}), (system, {"PYTHONPATH": packages})):
        try:
            works = subprocess.run(
                [python, "-c", "import syncer.cli, aiohttp, PIL"],
                env={**os.environ, **env}, capture_output=True, check=False, timeout=60, **as_user(OWNER),
            )  # fmt: skip
        except OSError:  # not even started: the interpreter is out of reach
            continue
        if works.returncode == 0:
            return python, env
    pytest.skip(f"no Python that {OWNER} may run with this one's packages")


def by(user: str, *, groups: tuple[str, ...] = (), umask: int = 0o027) -> dict[str, Any]:
    """The options of `syncer()` and `login()` for a `syncer` process run by `user`."""
    python, env = python_for_all()
    return {"python": python, "env": env, **as_user(user, groups=groups, umask=umask)}


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder every user can reach (pytest's own are mode 0700), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="syncer-owner-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def home_of(user: str, scratch: Path) -> Path:
    """A folder `user` owns, for its database and mirror (the config file in it is root's)."""
    home = scratch / user
    home.mkdir()
    shutil.chown(home, user, pwd.getpwnam(user).pw_gid)
    return home


async def owned_mirror(sim: Simulator, scratch: Path, **sections: dict[str, Any]) -> Path:
    """A config whose mirror its owner has synced once; returns the config's path."""
    config = write_config(sim, home_of(OWNER, scratch), **sections)
    run = await syncer("sync", "--config", str(config), **by(OWNER))
    assert run.code == ExitCode.OK, run.err
    return config


def only_line(run: Run) -> str:
    assert "Traceback" not in run.out + run.err
    (line,) = run.err.strip().splitlines()
    return line


# -- one owner -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["sync"], ["gallery"], ["verify", "--fix"], ["run"]])
async def test_root_is_refused_in_one_line_naming_the_mirrors_owner(
    sim: Simulator, scratch: Path, command: list[str]
) -> None:
    config = await owned_mirror(sim, scratch)
    run = await syncer(*command, "--config", str(config))
    assert run.code == ExitCode.USAGE
    line = only_line(run)
    assert f"belongs to {OWNER}, and this is root" in line
    assert f"sudo -u {OWNER} syncer" in line


async def test_the_owners_gallery_works_after_root_tried_to_build_it(sim: Simulator, scratch: Path) -> None:
    config = await owned_mirror(sim, scratch)
    await syncer("gallery", "--config", str(config))  # as root, as the server's setup is done
    uid = pwd.getpwnam(OWNER).pw_uid
    assert [p for p in config.parent.rglob("*") if p.lstat().st_uid != uid and p != config] == []
    run = await syncer("gallery", "--config", str(config), **by(OWNER))
    assert run.code == ExitCode.OK, run.err


async def test_a_lock_another_user_left_in_the_mirror_is_one_line_naming_it_and_its_owner(
    sim: Simulator, scratch: Path
) -> None:
    config = await owned_mirror(sim, scratch)
    lock = config.parent / "mirror" / ".syncer" / "locks" / "gallery.lock"
    lock.touch()  # root's, mode 0644: as a gallery run as root left it before runs were refused
    lock.chmod(0o644)
    run = await syncer("gallery", "--config", str(config), **by(OWNER))
    assert run.code == ExitCode.INCOMPLETE
    line = only_line(run)
    assert f"permission denied: {lock} belongs to root (group root, mode 0644)" in line
    assert f"this syncer runs as {OWNER}" in line
    assert "unexpected" not in line


async def test_a_folder_the_user_may_not_write_in_is_one_line_naming_its_owner(scratch: Path) -> None:
    roots = scratch / "roots"
    roots.mkdir(mode=0o755)
    run = await syncer("demo", "--dir", str(roots / "demo"), "--photos", "5", **by(OWNER))
    assert run.code == ExitCode.INCOMPLETE
    line = only_line(run)
    assert line == (
        f"syncer: permission denied: {roots} belongs to root (group root, mode 0755), and this syncer "
        f"runs as {OWNER}"
    )


# -- the secrets, read with the owner's rights --------------------------------------------------


def secrets_file(sim: Simulator, folder: Path, *, mode: int = 0o640, group: str = "nogroup") -> Path:
    """The units' secrets.env, root's and readable by the owner's group."""
    path = folder / "secrets.env"
    path.write_text(
        "# the app's credentials\n"
        f"PROCORE_CLIENT_ID={sim.config.client_id}\n"
        f"PROCORE_CLIENT_SECRET='{sim.config.client_secret}'\n",
        encoding="utf-8",
    )
    shutil.chown(path, "root", group)
    path.chmod(mode)
    return path


def from_secrets_file(path: Path, **procore: Any) -> dict[str, Any]:
    return {
        "client_id": "${PROCORE_CLIENT_ID}",
        "client_secret": "${PROCORE_CLIENT_SECRET}",
        "secrets_file": str(path),
        **procore,
    }


async def test_login_as_the_owner_reads_the_secrets_file_with_its_rights(
    make_sim: Any, scratch: Path
) -> None:
    sim = await make_sim(photos=12, projects=2)
    procore = from_secrets_file(secrets_file(sim, scratch), auth="authorization_code")
    config = write_config(sim, home_of(OWNER, scratch), procore=procore)
    run = await login(sim, str(config), **by(OWNER))
    assert run.code == ExitCode.OK, run.err
    saved = config.parent / "mirror" / ".syncer" / "procore-login.json"
    assert saved.stat().st_uid == pwd.getpwnam(OWNER).pw_uid
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


async def test_a_secrets_file_open_to_every_user_is_refused_naming_the_key(
    sim: Simulator, scratch: Path
) -> None:
    path = secrets_file(sim, scratch, mode=0o644)
    config = write_config(sim, scratch, procore=from_secrets_file(path))
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.USAGE
    assert only_line(run) == (
        f"syncer: procore.secrets_file: {path} is open to every user (mode 0644): chmod o-rwx {path}"
    )


async def test_a_secrets_file_the_user_may_not_read_is_one_line_naming_its_owner(
    sim: Simulator, scratch: Path
) -> None:
    path = secrets_file(sim, scratch, mode=0o600)
    config = write_config(sim, home_of(OWNER, scratch), procore=from_secrets_file(path))
    run = await syncer("sync", "--config", str(config), **by(OWNER))
    assert run.code == ExitCode.USAGE
    line = only_line(run)
    assert (
        f"procore.secrets_file: permission denied: {path} belongs to root (group nogroup, mode 0600)" in line
    )


async def test_a_bad_line_in_the_secrets_file_is_named_by_its_number_never_its_text(
    sim: Simulator, scratch: Path
) -> None:
    path = secrets_file(sim, scratch)
    path.write_text(f"PROCORE_CLIENT_ID=x\n{sim.config.client_secret}\n", encoding="utf-8")
    config = write_config(sim, scratch, procore=from_secrets_file(path))
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.USAGE
    assert only_line(run) == f"syncer: procore.secrets_file: line 2 of {path} is not NAME=value"


# -- sharing the archive read-only ----------------------------------------------------------------


def made_in(mirror: Path) -> list[Path]:
    """The mirror's root and everything in it but the syncer's own state."""
    return [mirror, *(p for p in mirror.rglob("*") if p.relative_to(mirror).parts[0] != ".syncer")]


def not_shared(mirror: Path) -> list[tuple[str, str, str]]:
    """What in the mirror lacks the staff group, or the modes that let the group read alone."""
    staff = grp.getgrnam(STAFF).gr_gid
    found = [(p, p.lstat()) for p in made_in(mirror)]
    return [
        (str(p), grp.getgrgid(st.st_gid).gr_name, oct(stat.S_IMODE(st.st_mode)))
        for p, st in found
        if (st.st_gid, stat.S_IMODE(st.st_mode) & 0o777) != (staff, 0o750 if p.is_dir() else 0o640)
    ]


@pytest.mark.parametrize("umask", [0o027, 0o022], ids=["the-units-umask", "a-shells-umask"])
async def test_mirror_group_gives_all_the_syncer_makes_the_group_and_read_only_modes(
    sim: Simulator, scratch: Path, umask: int
) -> None:
    config = write_config(sim, home_of(OWNER, scratch), mirror={"group": STAFF}, gallery={"enabled": True})
    run = await syncer("sync", "--config", str(config), **by(OWNER, groups=(STAFF,), umask=umask))
    assert run.code == ExitCode.OK, run.err
    mirror = config.parent / "mirror"
    assert len(made_in(mirror)) > 2 * len(sim.expected_files())  # photos, sidecars, pages and thumbnails
    assert not_shared(mirror) == []


async def test_a_setgid_mirror_root_shares_all_where_the_syncer_may_not_change_a_group(
    sim: Simulator, scratch: Path
) -> None:
    # The units' case: the owner is no member of the group, and the sandbox refuses chgrp anyway
    home = home_of(OWNER, scratch)
    mirror = home / "mirror"
    mirror.mkdir()
    shutil.chown(mirror, OWNER, STAFF)
    mirror.chmod(0o2750)
    config = write_config(sim, home, mirror={"group": STAFF}, gallery={"enabled": True})
    run = await syncer("sync", "--config", str(config), **by(OWNER))
    assert run.code == ExitCode.OK, run.err
    assert "mirror.group" not in run.err
    assert not_shared(mirror) == []


READ_AND_WRITE = """
import json, sys
done = {}
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        done["read " + path] = True
    except OSError:
        done["read " + path] = False
    try:
        with open(path + ".new", "wb"):
            pass
        done["write beside " + path] = True
    except OSError:
        done["write beside " + path] = False
print(json.dumps(done))
"""


def try_as(user: str, groups: tuple[str, ...], paths: list[Path]) -> dict[str, bool]:
    """Which of `paths` `user` may read, and beside which it may write a file."""
    python, _ = python_for_all()
    run = subprocess.run(
        [python, "-c", READ_AND_WRITE, *map(str, paths)],
        capture_output=True, text=True, check=True, timeout=60, **as_user(user, groups=groups),
    )  # fmt: skip
    result: dict[str, bool] = json.loads(run.stdout)
    return result


async def test_site_staff_in_the_group_read_the_gallery_and_photos_and_change_nothing(
    sim: Simulator, scratch: Path
) -> None:
    config = write_config(sim, home_of(OWNER, scratch), mirror={"group": STAFF}, gallery={"enabled": True})
    run = await syncer("sync", "--config", str(config), **by(OWNER, groups=(STAFF,)))
    assert run.code == ExitCode.OK, run.err
    mirror = config.parent / "mirror"
    photo = next(p for p in mirror.rglob("*.json") if ".gallery" not in p.parts).with_suffix("")
    thumbnail = next((mirror / ".gallery" / "thumbs").rglob("*.jpg"))
    shown = [mirror / "index.html", mirror / ".gallery" / "gallery.js", thumbnail, photo]
    staff = try_as(READER, (STAFF,), shown)
    assert staff == {**{f"read {p}": True for p in shown}, **{f"write beside {p}": False for p in shown}}
    assert not any(try_as(STRANGER, (), shown).values())


async def test_a_group_the_syncer_may_not_give_is_said_once_and_the_run_still_succeeds(
    sim: Simulator, scratch: Path
) -> None:
    # Not a member of the group: chgrp is refused, as a CIFS share or the units' sandbox refuses it
    config = write_config(sim, home_of(OWNER, scratch), mirror={"group": STAFF}, gallery={"enabled": True})
    run = await syncer("sync", "--config", str(config), **by(OWNER))
    assert run.code == ExitCode.OK, run.err
    (said,) = [line for line in run.err.splitlines() if "mirror.group" in line]
    assert f"could not be given the group {STAFF} (Operation not permitted)" in said
    assert f"is {OWNER} a member of {STAFF}?" in said
    sidecars = [
        p for p in made_in(config.parent / "mirror") if p.suffix == ".json" and ".gallery" not in p.parts
    ]
    assert len(sidecars) == len(sim.expected_files())  # every photo, with the group it could give


async def test_a_group_unknown_to_the_machine_is_refused_naming_the_key(
    sim: Simulator, scratch: Path
) -> None:
    config = write_config(sim, scratch, mirror={"group": "no-such-group"})
    run = await syncer("status", "--config", str(config))
    assert run.code == ExitCode.USAGE
    assert only_line(run) == (
        "syncer: mirror.group: no group 'no-such-group' on this machine (getent group no-such-group)"
    )
