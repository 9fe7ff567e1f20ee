"""Where a bundle lands: an exclusive claim on ``--out`` and the rules for replacing it.

* One export at a time per ``--out``: a lock file beside it (``.NAME.lock``,
  ``flock``) is taken before anything is built; a second export to the same
  place is refused at once instead of silently replacing the first.
* ``--force`` replaces only a bundle this tool wrote: a valid manifest of ours
  at its root and nothing else beside the files it names. Never the working
  folder or a folder above it, never a folder holding the export's own input.
* The bundle is built in a hidden sibling (``.NAME.building-*``) and renamed into
  place at the end; leftovers of a killed run are removed by the next export to
  the same place (under the lock, so never a running export's folder).
* Bundles get the user's umask (``mkdtemp`` alone would make them private).
"""
from __future__ import annotations

import fcntl
import glob
import os
import shutil
import tempfile
from pathlib import Path

from ..models.errors import UserInputError
from .manifest import MANIFEST, current_umask, read_manifest

#: files a bundle may hold besides its artifacts and the files the stages name in their details
EXTRA_FILES = {MANIFEST, "bench.json", "report.md", "report.html", "report_latency.png"}


def bundle_entries(out: Path) -> set[str]:
    """The top-level names a bundle of ours may hold, from its own manifest."""
    manifest = read_manifest(out)
    names = set(EXTRA_FILES)
    for a in manifest.artifacts:
        if a.path:
            names.add(a.path.split("/")[0])
        for v in a.details.values():
            if isinstance(v, str) and "/" not in v and v and (out / v).is_file():
                names.add(v)   # side files a stage wrote, e.g. ORT's required-operators config
    return names


def refuse_unless_ours(out: Path) -> None:
    if not (out / MANIFEST).is_file() or (out / MANIFEST).is_symlink():
        raise UserInputError(f"--force replaces only a bundle made by bsconv-export, and {out} holds no "
                             f"{MANIFEST}; choose another --out or remove it yourself")
    try:
        allowed = bundle_entries(out)
    except UserInputError as e:
        raise UserInputError(f"--force replaces only a bundle made by bsconv-export, and {out} is not one "
                             f"({e}); choose another --out or remove it yourself") from None
    foreign = sorted(p.name for p in out.iterdir() if p.name not in allowed)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserInputError(f"{out} holds files this tool did not write ({shown}); --force will not delete "
                             "them: choose another --out or move them away")


class OutClaim:
    """The right to write ``out`` for the length of a ``with`` block."""

    def __init__(self, out: Path, *, force: bool, inputs: tuple[Path, ...] = ()):
        self.out = Path(out)
        self.force = force
        self.inputs = inputs
        self.fd: int | None = None
        self.lock_path = self.out.parent / f".{self.out.name}.lock"

    # --- checks that need no lock -----------------------------------------------------------
    def _check_place(self) -> None:
        out = self.out
        if out.name in ("", ".", ".."):
            raise UserInputError(f"--out {out} names no new folder; give the bundle a name, e.g. --out build/bundle")
        full = Path(os.path.abspath(out))
        cwd = Path.cwd().resolve()
        if full.resolve() == cwd or cwd.is_relative_to(full.resolve()):
            raise UserInputError(f"--out {out} is the working folder or a folder above it; choose a new folder")
        for src in self.inputs:
            if Path(os.path.abspath(src)).is_relative_to(full) or src.resolve().is_relative_to(full.resolve()):
                raise UserInputError(f"--out {out} holds the export's input {src}; choose another --out")
        parent = full.parent
        if not parent.is_dir():
            raise UserInputError(f"cannot write {out}: {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserInputError(f"cannot write {out}: {parent} is not writable; choose another --out")

    def _check_existing(self) -> bool:
        """True when ``out`` exists (and may be replaced)."""
        out = self.out
        if out.is_symlink():
            raise UserInputError(f"--out {out} is a symbolic link; give the real folder or a new name")
        if not out.exists():
            return False
        if not out.is_dir():
            raise UserInputError(f"{out} exists and is not a directory; choose another --out")
        if not self.force:
            raise UserInputError(f"{out} already exists; pass --force to replace it or choose another --out")
        refuse_unless_ours(out)
        return True

    def check(self) -> bool:
        """Everything that can be refused before any work; True when ``out`` will be replaced."""
        self._check_place()
        return self._check_existing()

    # --- the claim ----------------------------------------------------------------------------
    def __enter__(self) -> "OutClaim":
        self._check_place()
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~current_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserInputError(f"another export to {self.out} is running; wait for it or choose "
                                     "another --out") from None
            try:  # the lock file may have been removed by the previous holder between open and flock
                same = os.fstat(fd).st_ino == os.stat(self.lock_path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:
            self.replacing = self._check_existing()
            self._remove_leftovers()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.lock_path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None

    def _remove_leftovers(self) -> None:
        for prefix in (f".{self.out.name}.building-", f".{self.out.name}.old-"):
            for p in self.out.parent.glob(f"{glob.escape(prefix)}*"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)

    def building_dir(self) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.building-", dir=self.out.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
        return tmp

    def commit(self, tmp: Path) -> None:
        """Rename the finished bundle into place (the old one, if any, goes last)."""
        share(tmp)
        out = self.out
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)


def share(root: Path) -> None:
    """Give every file and folder of a built bundle the user's umask: some converters write
    private (0600) files, and a bundle is made to be read by CI users and app builds."""
    mask = current_umask()
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)
