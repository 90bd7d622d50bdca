"""A folder of the gallery held open by its descriptor.

Every file the gallery reads, writes or removes is named relative to an open folder, never by a
path string walked again for each file. A folder is entered with `O_NOFOLLOW`, so a link planted
at its name is refused, and once it is open, a link swapped in for it (or for any folder above it)
during a build cannot redirect a single write out of the mirror. Files are opened with
`O_NOFOLLOW | O_NONBLOCK` and used only if they are regular files: a planted link is replaced, not
followed, and a planted FIFO cannot hang a build. With `mirror.group`, every folder and file made
is given the group the way the mirror's photos are (`Sharing`), on its descriptor, before its rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from syncer.errors import LocalFault
from syncer.mirror.files import Sharing, fill

DIRECTORY = os.O_RDONLY | os.O_DIRECTORY


class Folder:
    def __init__(self, fd: int, path: Path, sharing: Sharing | None = None) -> None:
        self.fd = fd
        self.path = path
        """For messages only: what the folder was called when it was opened."""
        self.sharing = sharing

    @classmethod
    def open(cls, path: Path, sharing: Sharing | None = None) -> Folder:
        """The mirror's root (which may itself be a link: the user's choice of where it lives)."""
        root = cls(os.open(path, DIRECTORY), path, sharing)
        if sharing is not None:  # the way in for the group: index.html is here
            sharing.apply(root.fd, path, folder=True)
        return root

    def sub(self, name: str) -> Folder:
        """The folder `name` inside this one, created if missing; a link or a file there is refused."""
        made = True
        try:
            os.mkdir(name, 0o755, dir_fd=self.fd)
        except FileExistsError:
            made = False
        try:
            folder = Folder(
                os.open(name, DIRECTORY | os.O_NOFOLLOW, dir_fd=self.fd), self.path / name, self.sharing
            )
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise LocalFault(
                f"{self.path / name} is a link or not a folder; the gallery writes only in real folders "
                "inside the mirror: remove it and run again"
            ) from None
        if made and self.sharing is not None:
            self.sharing.apply(folder.fd, folder.path, folder=True)
        return folder

    def read(self, name: str) -> bytes | None:
        """The bytes of the regular file `name`, or None if there is none (or a link, a folder, a
        FIFO or a device is there)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.ENXIO):
                return None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            with os.fdopen(os.dup(fd), "rb") as fh:
                return fh.read()
        finally:
            os.close(fd)

    def replace(self, name: str, data: bytes, *, sync: bool = True) -> None:
        """Put `data` at `name` atomically: a new file beside it, fsynced, renamed over it, then (with
        `sync`) the folder fsynced. Whatever was at `name` is replaced; a folder there is refused."""
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=self.fd)
        fill(fd, self.path / name, [data], sharing=self.sharing)
        try:
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            if isinstance(exc, IsADirectoryError):
                where = self.path / name
                raise LocalFault(
                    f"{where} is a folder, where the gallery keeps a file: move it away and run again"
                ) from None
            raise
        if sync:
            self.sync()

    def remove(self, name: str) -> bool:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def files(self) -> Iterator[str]:
        """The names of the regular files in this folder."""
        with os.scandir(self.fd) as entries:
            yield from (e.name for e in entries if e.is_file(follow_symlinks=False))

    def folders(self) -> Iterator[str]:
        with os.scandir(self.fd) as entries:
            yield from (e.name for e in entries if e.is_dir(follow_symlinks=False))

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
