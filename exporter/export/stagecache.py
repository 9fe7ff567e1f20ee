"""The stage cache: a verified artifact, and its check, are made once per content, not once per export.

Each stage of an export has a *key*: the sha256 of everything its file depends on — the
program it reads (the saved capture's sha256; for the capture itself, the checkpoint's or
program file's sha256 and the model source), the rows it requires (their files' sha256),
the options it reads, the spec, the versions of the packages its plugin uses, this tool's
own code and the platform. The key names a folder under ``<cache>/stages/`` holding the
file(s) the stage wrote and its record; an export whose key hits copies the files into the
bundle, re-hashes them against the record, and says ``reused: {key, first_verified_at}``.

Only files whose check passed are stored, together with that check's records under a
*check key* (the file's sha256, the program, the check inputs' digest, the check options,
the versions and the platform): an export whose artifacts and check keys all hit does not
run the check again either, and its records say so. ``bsconv-export check`` never reads
the cache.

Entries are written aside and renamed into place (two exports may share the cache), a
hit touches its entry (the folder is ``$BSCONV_EXPORT_STAGE_CACHE`` when set), and after each store the least recently used entries are removed
until the cache is under its size (``$BSCONV_EXPORT_STAGE_CACHE_BYTES``, default 4 GiB).
An entry that does not parse, names unexpected files or whose files fail their hashes is
deleted and the stage runs. Nothing in the folder is trusted beyond what its hashes prove.

The folder is the tool's only when the tool made it (:mod:`kernel.owned`): created with a marker,
or found empty and marked; a folder holding anything else without the marker is refused (exit 2),
never adopted. Inside it, an entry is a real folder named by a 64-hex-digit key holding a regular
``entry.json`` that names that key: eviction, ``--clear`` and discarding touch only those (renamed
away, then removed without following a link); every other name there is left alone. ``entry.json``
and ``stats.json`` are read bounded, as regular files only (a FIFO never blocks).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ...kernel.errors import UserInputError
from ...kernel.safe_io import is_regular, read_regular
from ...kernel.cache_dirs import built_aside, cache_root
from ...kernel.owned import tool_folder
from ..kit.records import ArtifactRecord, CheckRecord, Status, path_sha256
from .cache_keys import SCHEMA

ENTRY = "entry.json"
FILES = "files"
MAX_ENTRY_BYTES = 4 << 20
MAX_CHECKS_PER_ENTRY = 8
DEFAULT_MAX_BYTES = 4 << 30
SIZE_ENV = "BSCONV_EXPORT_STAGE_CACHE_BYTES"
DIR_ENV = "BSCONV_EXPORT_STAGE_CACHE"
WHAT = "stage cache"
KEY_NAME = re.compile(r"[0-9a-f]{64}")


def stage_cache_root() -> Path:
    """``$BSCONV_EXPORT_STAGE_CACHE``, else ``<cache>/stage-cache`` (see kernel.cache_dirs.cache_root)."""
    given = os.environ.get(DIR_ENV)
    return Path(given).expanduser() if given else cache_root() / "stage-cache"


def owned_root(*, create: bool) -> Path | None:
    """The stage cache's folder, refused (one line, exit 2) unless this tool made it; None when it does not
    exist and ``create`` is false."""
    return tool_folder(stage_cache_root(), WHAT, DIR_ENV if os.environ.get(DIR_ENV) else "BSCONV_EXPORT_CACHE",
                       create=create)


def max_bytes() -> int:
    """``$BSCONV_EXPORT_STAGE_CACHE_BYTES`` (a whole number of bytes), else 4 GiB."""
    given = os.environ.get(SIZE_ENV, "").strip()
    if not given:
        return DEFAULT_MAX_BYTES
    if not given.isdigit():
        raise UserInputError(f"{SIZE_ENV}={given[:40]!r} is not a whole number of bytes; set it to e.g. "
                             f"{DEFAULT_MAX_BYTES} (4 GiB), or unset it")
    return int(given)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Hit:
    record: ArtifactRecord
    entry: dict


class StageCache:
    """The per-user stage cache under ``root`` (default ``<cache>/stages``)."""

    def __init__(self, root: Path | None = None, *, create: bool = True):
        """The cache at ``root`` (default: the configured folder), refused unless this tool made it.
        ``create=False`` makes nothing: a folder that does not exist is an empty cache."""
        self.limit = max_bytes()
        if root is None:
            self.root = owned_root(create=create)
        else:
            self.root = tool_folder(Path(root), WHAT, DIR_ENV, create=create)
        self.discarded: list[str] = []     # entries found bad this run (key: why)

    # --- reading ---

    def _entry_dir(self, key: str) -> Path | None:
        """The entry folder of ``key`` when it is one of ours: a real folder with a regular entry.json."""
        if self.root is None or not KEY_NAME.fullmatch(key):
            return None
        entry = self.root / key
        return entry if not entry.is_symlink() and entry.is_dir() and is_regular(entry / ENTRY) else None

    def _load(self, key: str) -> dict:
        """``key``'s entry.json, read bounded and as a regular file only; ValueError when it is not ours."""
        try:
            text = read_regular(self.root / key / ENTRY, "a stage cache entry", max_bytes=MAX_ENTRY_BYTES,
                                follow_links=False)
        except UserInputError as e:
            raise ValueError(str(e)) from None
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("schema") != SCHEMA or d.get("key") != key:
            raise ValueError("entry.json is not this key's")
        return d

    def _read(self, key: str) -> dict | None:
        if self._entry_dir(key) is None:
            return None
        try:
            return self._load(key)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
            self.discard(key, f"unreadable entry ({e})")
            return None

    def lookup(self, key: str, fmt, workdir: Path) -> Hit | None:
        """The cached files of ``fmt`` copied into ``workdir`` and re-hashed, with their record; None on a
        miss (a bad entry is deleted: then the stage runs)."""
        from ...kernel.errors import UserInputError
        from ..bundle.manifest_io import artifact_from_dict
        d = self._read(key)
        if d is None:
            return None
        t0 = time.perf_counter()
        copied: list[Path] = []
        try:
            record = artifact_from_dict(d.get("record"), f"stage cache entry {key[:12]}")
            files = d.get("files")
            names = [record.path, *record.side_files]
            if (not record.ok or record.format != fmt.name or record.path != fmt.filename
                    or not isinstance(files, dict) or sorted(files) != sorted(names)
                    or any("/" in n or n.startswith(".") for n in names)
                    or not isinstance(d.get("first_verified_at"), str)):
                raise ValueError("the entry does not describe this stage's files")
            if (self.root / key / FILES).is_symlink():
                raise ValueError("its files folder is a link")
            for name in names:
                src, dst = self.root / key / FILES / name, workdir / name
                if src.is_symlink() or dst.exists() or dst.is_symlink():
                    raise ValueError(f"{name} cannot be copied")
                copied.append(dst)
                if src.is_dir():
                    shutil.copytree(src, dst, symlinks=True)
                    if any(p.is_symlink() for p in dst.rglob("*")):
                        raise ValueError(f"{name} holds a link")
                else:
                    shutil.copyfile(src, dst)
                if path_sha256(dst) != files[name] or (name == record.path and files[name] != record.sha256):
                    raise ValueError(f"{name} fails its hash")
        except (OSError, ValueError, UserInputError) as e:
            for p in copied:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists() or p.is_symlink():
                    p.unlink()
            self.discard(key, str(e))
            return None
        self._touch(key)
        record.seconds = time.perf_counter() - t0
        record.reused = {"key": key, "first_verified_at": d["first_verified_at"]}
        return Hit(record=record, entry=d)

    def checks(self, hit: Hit, check_key: str) -> tuple[list[CheckRecord], dict] | None:
        """The check records stored with ``hit`` under ``check_key``, marked reused (None: not stored)."""
        from ...kernel.errors import UserInputError
        from ..bundle.manifest_io import check_records_from_list
        stored = (hit.entry.get("checks") or {}).get(check_key) if isinstance(hit.entry.get("checks"), dict) else None
        if not isinstance(stored, dict):
            return None
        try:
            records = check_records_from_list(stored.get("records"), "stage cache entry")
        except UserInputError:
            return None
        if not records or any(r.status not in (Status.OK, Status.SKIPPED) for r in records):
            return None
        when = stored.get("verified_at") if isinstance(stored.get("verified_at"), str) else hit.entry["first_verified_at"]
        for r in records:
            r.reused = {"key": check_key, "first_verified_at": when}
        ref_err = stored.get("reference_error")
        return records, ref_err if isinstance(ref_err, dict) else {}

    # --- writing ---

    def store(self, key: str, record: ArtifactRecord, workdir: Path, check_key: str,
              check_records: list[CheckRecord], reference_error: dict, facts: list | None = None) -> None:
        """Keep a checked file (and its check) under ``key``; an existing entry gains the check."""
        checks = {check_key: {"records": [r.to_dict() | {"reused": None} for r in check_records],
                              "reference_error": reference_error, "verified_at": now()}}
        if self.root is None or not KEY_NAME.fullmatch(key):
            return
        existing = self._read(key)
        if existing is not None:
            merged = {**(existing.get("checks") if isinstance(existing.get("checks"), dict) else {}), **checks}
            existing["checks"] = dict(list(merged.items())[-MAX_CHECKS_PER_ENTRY:])
            self._write_entry(self.root / key, existing)
            self._touch(key)
            return
        names = [record.path, *record.side_files]
        kept = {**record.to_dict(), "reused": None, "seconds": record.seconds}
        entry = {"schema": SCHEMA, "key": key, "record": kept, "first_verified_at": now(), "checks": checks,
                 "facts": facts}
        if os.path.lexists(self.root / key):   # not an entry of ours (checked above): left alone
            return
        with built_aside(self.root / key, "a stage cache entry",
                         keep_existing=lambda: os.path.lexists(self.root / key)) as tmp:
            (tmp / FILES).mkdir()
            files = {}
            for name in names:
                src = workdir / name
                if src.is_dir():
                    shutil.copytree(src, tmp / FILES / name)
                else:
                    shutil.copyfile(src, tmp / FILES / name)
                files[name] = path_sha256(tmp / FILES / name)
            if files[record.path] != record.sha256:
                raise ValueError(f"{record.path} changed while it was being cached")
            entry["files"] = files
            self._write_entry(tmp, entry)

    def _write_entry(self, folder: Path, entry: dict) -> None:
        tmp = folder / f".{ENTRY}.{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(entry, sort_keys=True, allow_nan=False))
        os.replace(tmp, folder / ENTRY)

    def _touch(self, key: str) -> None:
        try:
            os.utime(self.root / key / ENTRY, follow_symlinks=False)
        except (OSError, NotImplementedError):
            pass

    def discard(self, key: str, why: str) -> bool:
        """Remove an entry of ours (renamed away first, so a concurrent reader sees a miss, not half a
        folder; nothing inside is followed). False when it is not ours or could not be removed."""
        self.discarded.append(f"{key[:12]}: {why}")
        entry = self._entry_dir(key)
        if entry is None:
            return False
        gone = self.root / f".discarded-{key}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            entry.rename(gone)
        except OSError:
            return False
        shutil.rmtree(gone, ignore_errors=True)
        return True

    def entries(self) -> list[tuple[float, int, str]]:
        """(last used, bytes, key) of every entry of ours; nothing else in the folder is looked into."""
        out = []
        if self.root is None or not self.root.is_dir():
            return out
        for name in os.listdir(self.root):
            entry = self._entry_dir(name)
            if entry is None:
                continue
            size = 0
            for dirpath, dirs, files in os.walk(entry):   # os.walk does not follow links
                for f in files:
                    try:
                        st = os.lstat(os.path.join(dirpath, f))
                    except OSError:
                        continue
                    size += st.st_size if not os.path.islink(os.path.join(dirpath, f)) else 0
            out.append((os.lstat(entry / ENTRY).st_mtime, size, name))
        return sorted(out)

    def evict(self, limit: int | None = None, keep: tuple[str, ...] = ()) -> list[str]:
        """Remove least recently used entries until the cache is under ``limit`` bytes; never ``keep``."""
        limit = self.limit if limit is None else limit
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, key in entries:
            if total <= limit:
                break
            if key in keep:
                continue
            gone = self.discard(key, "least recently used")
            self.discarded.pop()
            if gone:
                removed.append(key)
                total -= size
        return removed

    def summary(self) -> dict:
        """Where the cache is, how many entries and bytes it holds (by format), and its limit."""
        entries = self.entries()
        by: dict[str, list[int]] = {}
        for _, size, key in entries:
            try:
                fmt = self._load(key)["record"]["format"]
            except (OSError, ValueError, KeyError, TypeError, RecursionError):
                fmt = "?"
            if not isinstance(fmt, str):
                fmt = "?"
            by.setdefault(fmt, []).append(size)
        return {"folder": str(self.root if self.root is not None else stage_cache_root()),
                "entries": len(entries), "bytes": sum(s for _, s, _ in entries),
                "max_bytes": self.limit, "size_variable": SIZE_ENV,
                "by_format": [{"format": f, "entries": len(s), "bytes": sum(s)} for f, s in sorted(by.items())]}

    def clear(self) -> tuple[int, int]:
        """(entries removed, entries that could not be removed, e.g. in a read-only folder)."""
        removed = failed = 0
        for _, _, key in self.entries():
            if self.discard(key, "cleared"):
                removed += 1
            else:
                failed += 1
        self.discarded.clear()
        return removed, failed
