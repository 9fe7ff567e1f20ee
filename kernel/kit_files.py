"""What a kit or converter environment held when it was made, and proof it still holds exactly that.

The LiteRT converter environment and the ARM64 kit are folders under the user's cache that the tool
runs code from. When one is made, :func:`record_files` writes :data:`RECORD` into it: every file's
size and sha256 (and its stat signature), every link's target. Before one is used,
:func:`verify_files` walks it again: a file added (a planted ``.pth``), removed, or changed is
refused in one line, so a tampered kit never runs. Hashing 2 GB on every use would cost seconds, so a
file is re-hashed only when its stat signature (size, mtime, ctime, inode) differs from the recorded
one — ctime cannot be set back from user space. A sub-folder with a record of its own is a part made
later (the ExecuTorch runner inside the ARM64 kit): it is verified by its own record, when it is used.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from .errors import UserInputError
from .safe_io import loads_json, read_regular

RECORD = ".bsconv-export-files.json"
MAX_RECORD_BYTES = 64 << 20
#: files a kit writes into itself while it is used, never code (none today; kept explicit)
IGNORED = frozenset({RECORD})


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _walk(root: Path):
    """(relative path, lstat) of every entry under ``root``, links not followed, parts with their own
    record left out."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        keep = []
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                filenames.append(d)           # a link to a folder is an entry, not a folder to enter
            elif not os.path.lexists(os.path.join(full, RECORD)):
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel not in IGNORED:
                yield rel, os.lstat(full)


def record_files(root: Path) -> None:
    """Write ``root``'s record: call it last, once everything the folder holds is in place."""
    files, links = {}, {}
    for rel, st in _walk(root):
        full = os.path.join(root, rel)
        if stat.S_ISLNK(st.st_mode):
            links[rel] = os.readlink(full)
        elif stat.S_ISREG(st.st_mode):
            files[rel] = [_sha256(full), *_signature(st)]
    (root / RECORD).write_text(json.dumps({"files": files, "links": links}, sort_keys=True))
    _VERIFIED.discard(str(root))


def verify_files(root: Path, what: str, fix: str) -> None:
    """Refuse, in one line naming ``what`` and ``fix``, a folder that is not exactly what its record says
    (a walk of stat calls; only a file whose signature changed is hashed again). A folder is walked once
    per process: a command checks a kit when it plans and again when it runs it (2.5 s for the LiteRT
    environment's 40,000 files), and what changes within one command is not a kit someone handed over."""
    if str(root) in _VERIFIED:
        return
    problem = _problem(str(root))
    if problem:
        raise UserInputError(f"{what} at {root} {problem}, so it is not run: {fix}")


_VERIFIED: set[str] = set()


def _problem(root: str) -> str | None:
    try:
        data = loads_json(read_regular(Path(root) / RECORD, "the kit's record", max_bytes=MAX_RECORD_BYTES,
                                       follow_links=False), RECORD, "make it again")
        files, links = data["files"], data["links"]
        if not isinstance(files, dict) or not isinstance(links, dict):
            raise TypeError
    except (UserInputError, KeyError, TypeError):
        return "has no readable record of its files (made by an older bsconv-export, or changed)"
    seen = set()
    for rel, st in _walk(Path(root)):
        seen.add(rel)
        full = os.path.join(root, rel)
        if stat.S_ISLNK(st.st_mode):
            if links.get(rel) != os.readlink(full):
                return f"holds a link it was not made with ({rel})"
            continue
        want = files.get(rel)
        if not stat.S_ISREG(st.st_mode) or not isinstance(want, list) or len(want) != 5:
            return f"holds a file it was not made with ({rel})"
        if want[1:] != _signature(st) and (st.st_size != want[1] or _sha256(full) != want[0]):
            return f"has a file that changed since it was made ({rel})"
    missing = sorted((set(files) | set(links)) - seen)
    if missing:
        return f"lacks a file it was made with ({missing[0]})"
    _VERIFIED.add(root)
    return None
