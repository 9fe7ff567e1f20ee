"""Where a bundle lands: an exclusive claim on ``--out`` and the rules for replacing it.

* One export at a time per ``--out``: a lock file beside it (``.NAME.lock``,
  ``flock``) is taken before anything is built; a second export to the same
  place is refused at once instead of silently replacing the first.
* ``--force`` replaces only a bundle this tool wrote, proven by content: a valid
  manifest of ours at its root, and every other entry's bytes exactly the
  sha256 and size that manifest records for it (its ``files``). A name the
  manifest records but whose bytes differ is the user's, not ours. Checked when
  the claim is taken, just before the old bundle is moved aside, and once more
  after the move (where nobody writes) before it is deleted; a file that arrived
  in between puts the old bundle back. Never
  the working folder or a folder above it, never a folder holding the export's input.
* The bundle is built in a hidden sibling (``.NAME.building-*``) and renamed into
  place at the end. The build folder holds a marker file naming itself from the
  moment it is made; leftovers of a killed run are removed by the next export to
  the same place only when they carry that marker (under the lock, so never a
  running export's folder) — a user's folder that merely has the name is kept.
* The lock file is ours only when we created it or it carries our marker: a
  user's file of that name is refused, never adopted or removed.
* Bundles get the user's umask (``mkdtemp`` alone would make them private).
"""
from __future__ import annotations

import fcntl
import glob
import os
import shutil
import tempfile
from pathlib import Path

from ...kernel.errors import UserInputError
from ...kernel.owned import has_marker
from ...kernel.safe_io import current_umask
from .manifest import BUILD_MARKER, MANIFEST, TOOL_FILES
from .manifest_io import read_manifest
from .on_disk import matches
from ...kernel.safe_io import is_regular

LOCK_MARKER = b"bsconv-export lock\n"
MAX_MARKER_BYTES = 4096


def refuse_unless_ours(out: Path) -> None:
    """Raise unless every entry of ``out`` is, byte for byte, what our manifest there records."""
    if not (out / MANIFEST).is_file() or (out / MANIFEST).is_symlink():
        raise UserInputError(f"--force replaces only a bundle made by bsconv-export, and {out} holds no "
                             f"{MANIFEST}; choose another --out or remove it yourself")
    try:
        manifest = read_manifest(out)
    except UserInputError as e:
        raise UserInputError(f"--force replaces only a bundle made by bsconv-export, and {out} is not one "
                             f"({e}); choose another --out or remove it yourself") from None
    if manifest.files is None:
        raise UserInputError(f"{out} was written by an older bsconv-export that did not record its files' "
                             "hashes, so --force cannot prove every file there is ours; choose another --out "
                             "or remove it yourself")
    strangers = sorted(set(manifest.files) - names_an_export_writes())
    if strangers:
        shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
        raise UserInputError(f"{out}'s manifest lists files no export writes ({shown}), whatever their hashes, so "
                             "--force will not delete them: choose another --out or move them away")
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name != MANIFEST and not (p.name in manifest.files and matches(p, manifest.files[p.name])))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserInputError(f"{out} holds files this tool did not write, or that changed since it wrote them "
                             f"({shown}); --force will not delete them: choose another --out or move them away")


def names_an_export_writes() -> set[str]:
    """Every top-level name a bundle of this tool can hold besides its manifest: each registered format's
    file and the side files its row declares, and what bench and report write into a bundle."""
    from ..formats import FORMATS
    return ({f.filename for f in FORMATS.values()} | {n for f in FORMATS.values() for n in f.side_files}
            | set(TOOL_FILES))


def _marker_text(folder: Path) -> bytes:
    return f"bsconv-export build folder {folder.name}\n".encode()


def made_by_us(folder: Path) -> bool:
    """A leftover build (or old-bundle) folder of ours: a real folder whose marker names it."""
    return has_marker(folder, BUILD_MARKER, _marker_text(folder))


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
    def _open_lock(self) -> tuple[int, bool]:
        """The lock file, opened; True when this call created it."""
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                           0o666 & ~current_umask()), True
        except FileExistsError:
            pass
        if not is_regular(self.lock_path):
            raise UserInputError(f"{self.lock_path} exists and is not a lock file of bsconv-export; move it away "
                                 "or choose another --out")
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK), False
        except FileNotFoundError:
            return self._open_lock()   # its holder removed it meanwhile

    def __enter__(self) -> "OutClaim":
        self._check_place()
        while True:
            fd, created = self._open_lock()
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
            if not same:
                os.close(fd)
                continue
            if created:
                os.write(fd, LOCK_MARKER)
                break
            content = os.pread(fd, MAX_MARKER_BYTES, 0)
            if content == LOCK_MARKER:
                break   # a killed run's lock: ours to reuse
            os.close(fd)
            if not content:
                raise UserInputError(f"another export to {self.out} is starting; wait for it or choose "
                                     "another --out")
            raise UserInputError(f"{self.lock_path} exists and is not a lock file of bsconv-export; move it "
                                 "away or choose another --out")
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
                if made_by_us(p):
                    shutil.rmtree(p, ignore_errors=True)

    def remove_killed_run(self) -> None:
        """After the process exporting to ``out`` was killed: its marked build folders and its lock go
        (under the lock, which a dead process no longer holds); a user's file or a running export's are kept."""
        try:
            fd, _ = self._open_lock()
        except UserInputError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return     # someone else is exporting there now
        if os.pread(fd, MAX_MARKER_BYTES, 0) not in (LOCK_MARKER, b""):
            os.close(fd)
            return     # not our lock file
        self.fd = fd
        try:
            self._remove_leftovers()
        finally:
            self._release()

    def _marked_dir(self, kind: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.{kind}-", dir=self.out.parent))
        (folder / BUILD_MARKER).write_bytes(_marker_text(folder))   # before anything else goes in
        return folder

    def building_dir(self) -> Path:
        tmp = self._marked_dir("building")
        os.chmod(tmp, 0o777 & ~current_umask())
        return tmp

    def commit(self, tmp: Path) -> None:
        """Rename the finished bundle into place (the old one, if any, goes last, and only if
        it is still, byte for byte, the bundle of ours it was when the claim was taken)."""
        share(tmp)
        out = self.out
        if out.exists():
            refuse_unless_ours(out)
            old = self._marked_dir("old")
            os.replace(out, old / out.name)
            try:   # once more where nobody writes: a file that arrived between the check and the rename
                refuse_unless_ours(old / out.name)
            except UserInputError:
                os.replace(old / out.name, out)   # the old bundle back as it was, with what arrived
                shutil.rmtree(old, ignore_errors=True)
                raise
            (tmp / BUILD_MARKER).unlink()
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            (tmp / BUILD_MARKER).unlink()
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
