"""A bundle's files on disk: paths that stay inside it, the digest of every top-level entry (what
``files`` in the manifest records, so what is ours is proven by content), what changed since the
export, and the tool's own later files (bench results, reports) recorded into it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ...kernel.errors import UserInputError
from ...kernel.safe_io import check_relative, loads_json, read_regular, write_bundle_file
from .manifest import BUILD_MARKER, MANIFEST, MAX_ARTIFACT_BYTES, MAX_MANIFEST_BYTES, Manifest
from .manifest_io import read_manifest, write_manifest


def inside(bundle: Path, rel: str, where: str = MANIFEST) -> Path:
    """``bundle/rel`` after checking that it stays inside the bundle: no component is a
    symbolic link, and a directory (an .mlpackage) holds no link and no item path that leaves."""
    parts = check_relative(rel, where).parts
    path = bundle
    for part in parts:
        path = path / part
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise UserInputError(f"{where}: artifact {rel} is missing from the bundle") from None
        if stat.S_ISLNK(st.st_mode):
            raise UserInputError(f"{where}: artifact {rel} is (or passes through) a symbolic link; "
                                 "refusing to follow it out of the bundle")
    if stat.S_ISDIR(st.st_mode):
        _check_tree(path, rel, where)
    elif not stat.S_ISREG(st.st_mode):
        raise UserInputError(f"{where}: artifact {rel} is not a regular file (a pipe or device?); refusing to read it")
    elif st.st_size > MAX_ARTIFACT_BYTES:
        raise UserInputError(f"{where}: artifact {rel} is {path.stat().st_size >> 20} MiB, over the "
                             f"{MAX_ARTIFACT_BYTES >> 30} GiB this tool loads")
    return path


def _check_tree(root: Path, rel: str, where: str) -> None:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise UserInputError(f"{where}: {rel} holds a symbolic link ({p.relative_to(root)}); refusing it")
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise UserInputError(f"{where}: {rel} holds {p.relative_to(root)}, which is not a regular file; "
                                     "refusing it")
            if name in filenames:
                total += st.st_size
    if total > MAX_ARTIFACT_BYTES:
        raise UserInputError(f"{where}: artifact {rel} is over the {MAX_ARTIFACT_BYTES >> 30} GiB this tool loads")
    manifest = root / "Manifest.json"
    if manifest.is_file():  # an .mlpackage names its items by path: each must stay inside
        doc = loads_json(read_regular(manifest, f"{rel}/Manifest.json", max_bytes=MAX_MANIFEST_BYTES,
                                      follow_links=False), f"{where}: {rel}/Manifest.json", "re-export the bundle")
        entries = doc.get("itemInfoEntries", {}) if isinstance(doc, dict) else {}
        for entry in (entries.values() if isinstance(entries, dict) else []):
            item = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(item, str):
                raise UserInputError(f"{where}: {rel}/Manifest.json has an item without a path")
            check_relative(item, f"{rel}/Manifest.json")


# --- what the tool wrote, by content -----------------------------------------------------------

def entry_digest(path: Path) -> dict | None:
    """``{"sha256", "bytes"}`` of a bundle entry: a regular file, or a folder (an .mlpackage) that holds
    only folders and regular files; None for anything else (a link, a pipe, a folder holding one)."""
    from ..kit.records import path_bytes, path_sha256
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            for name in dirnames + filenames:
                mode = os.lstat(os.path.join(dirpath, name)).st_mode
                if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    return None
    elif not stat.S_ISREG(st.st_mode):
        return None
    return {"sha256": path_sha256(path), "bytes": path_bytes(path)}


def inventory(bundle: Path) -> dict[str, dict]:
    """The digest of every top-level entry of a bundle being written (all but the manifest)."""
    out = {}
    for p in sorted(bundle.iterdir()):
        if p.name in (MANIFEST, BUILD_MARKER):
            continue
        digest = entry_digest(p)
        if digest is None:
            raise RuntimeError(f"the export wrote {p.name}, which is neither a file nor a folder of files")
        out[p.name] = digest
    return out


def matches(path: Path, recorded: dict) -> bool:
    """``path`` holds exactly the bytes ``recorded`` (size compared first: no hashing of a stranger)."""
    from ..kit.records import path_bytes
    try:
        if path.is_symlink() or path_bytes(path) != recorded["bytes"]:
            return False
    except OSError:
        return False
    digest = entry_digest(path)
    return digest is not None and digest["sha256"] == recorded["sha256"]


def changed_since_export(bundle: Path, manifest: Manifest) -> list[str]:
    """The recorded files of ``bundle`` whose bytes differ from the manifest's record (or are gone),
    and the artifacts whose bytes differ from their row's sha256 (all a schema-1/2 bundle has)."""
    from ..kit.records import path_bytes
    digests: dict[str, dict | None] = {}   # each entry hashed once

    def digest(rel: str) -> dict | None:
        if rel not in digests:
            try:
                digests[rel] = entry_digest(bundle / rel)
            except OSError:
                digests[rel] = None
        return digests[rel]

    changed = []
    if manifest.files is not None:
        for name, rec in manifest.files.items():
            p = bundle / name
            try:   # the size first: a stranger's big file is never hashed
                same_size = not p.is_symlink() and path_bytes(p) == rec["bytes"]
            except OSError:
                same_size = False
            if not same_size or (digest(name) or {}).get("sha256") != rec["sha256"]:
                changed.append(name)
    for a in manifest.artifacts:
        if a.ok and a.path and a.path not in changed and (digest(a.path) or {}).get("sha256") != a.sha256:
            changed.append(a.path)
    return changed


def check_recordable(bundle: Path, name: str) -> Manifest:
    """Refuse, before any work, to write ``bundle/name`` over the bundle's manifest or an artifact, or over
    anything that is not, byte for byte, a file the manifest records (a user's file, a planted link).
    Returns the bundle's manifest."""
    manifest = read_manifest(bundle)
    if name == MANIFEST or any(a.path and a.path.split("/")[0] == name for a in manifest.artifacts):
        raise UserInputError(f"{bundle / name} is the bundle's own {'manifest' if name == MANIFEST else 'artifact'}; "
                             "write elsewhere with --out")
    existing = bundle / name
    if existing.exists() or existing.is_symlink():
        recorded = (manifest.files or {}).get(name)
        if recorded is None or not matches(existing, recorded):
            raise UserInputError(f"{existing} was not written by bsconv-export (or changed since), so it is not "
                                 "replaced; move it away, or write elsewhere with --out")
    return manifest


def record_bundle_file(bundle: Path, name: str, data: str | bytes) -> Path:
    """Write ``bundle/name`` and record its digest in the bundle's manifest, so a later ``--force``
    knows it as ours (bench.json, the report); refused as :func:`check_recordable` says.
    A bundle without ``files`` (schema 1 and 2) gets the file alone."""
    manifest = check_recordable(bundle, name)
    dest = write_bundle_file(bundle, name, data)
    if manifest.files is not None:
        manifest.files[name] = entry_digest(dest)
        write_manifest(bundle, manifest)
    return dest
