"""Files the tool writes where a user chose (``sweep.json``, ``--results``, a ``--zoo`` plan, ``bench --out``,
``report --out``): sealed, so a later run replaces only a file it wrote and nobody changed since.

A sealed file carries the sha256 of its own content: JSON as a ``written_by`` member (the digest of the
object without it, canonically dumped), text (TOML, Markdown, HTML) as a last comment line (the digest
of the lines above), PNG as a ``tEXt`` chunk before ``IEND`` (the digest of the file without it). An
existing file at the destination is replaced only when its seal holds: a user's file of that name, a
link, a FIFO or an edited result is refused in one line and left as it is. Inside a bundle the
manifest's ``files`` decide instead (``manifest.record_bundle_file``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from .errors import UserInputError
from .safe_io import read_regular, write_bundle_file

SEAL_KEY = "written_by"
TOOL = "bsconv-export"
MAX_SEALED_BYTES = 64 << 20
_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_KEY = b"bsconv-export-sha256"
_TEXT_SEAL = re.compile(rb"(?:#|<!--) written by bsconv-export; sha256 of the text above: ([0-9a-f]{64})(?: -->)?\n?\Z")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(d: dict) -> bytes:
    return json.dumps({k: v for k, v in d.items() if k != SEAL_KEY}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode()


def seal_json(d: dict) -> str:
    """``d`` as indented JSON with its seal."""
    return json.dumps({**d, SEAL_KEY: {"tool": TOOL, "sha256": _sha(_canonical(d))}}, indent=1,
                      allow_nan=False) + "\n"


def seal_text(text: str, html_comment: bool = False) -> str:
    """``text`` with a last comment line sealing it (``#`` for TOML, ``<!-- -->`` for Markdown and HTML)."""
    body = text if text.endswith("\n") else text + "\n"
    line = f"written by bsconv-export; sha256 of the text above: {_sha(body.encode())}"
    return body + (f"<!-- {line} -->\n" if html_comment else f"# {line}\n")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def seal_png(data: bytes) -> bytes:
    """A PNG (ending in its IEND chunk) with a tEXt chunk sealing the rest, placed just before IEND."""
    iend = data.rfind(b"IEND") - 4
    if not data.startswith(_PNG) or iend < len(_PNG):
        raise ValueError("not a PNG")
    return data[:iend] + _png_chunk(b"tEXt", _PNG_KEY + b"\0" + _sha(data).encode()) + data[iend:]


def is_sealed(data: bytes) -> bool:
    """The content carries a seal of this tool that matches it."""
    if data.startswith(_PNG):
        iend = data.rfind(b"IEND") - 4
        start = data.rfind(b"tEXt" + _PNG_KEY + b"\0", 0, max(iend, 0)) - 4
        if start < 0:
            return False
        (length,) = struct.unpack(">I", data[start:start + 4])
        end = start + 12 + length
        if end != iend:
            return False
        claimed = data[start + 8 + len(_PNG_KEY) + 1:start + 8 + length]
        return claimed == _sha(data[:start] + data[end:]).encode()
    m = _TEXT_SEAL.search(data)
    if m is not None:
        return m.group(1).decode() == _sha(data[:m.start()])
    try:
        d: Any = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    seal = d.get(SEAL_KEY) if isinstance(d, dict) else None
    try:
        return isinstance(seal, dict) and seal.get("tool") == TOOL and seal.get("sha256") == _sha(_canonical(d))
    except (TypeError, ValueError):
        return False


def replaceable(dest: Path) -> bool:
    """Nothing is at ``dest``, or a regular file (not a link) whose seal holds."""
    if not os.path.lexists(dest):
        return True
    try:
        return is_sealed(read_regular(dest, "an earlier result", max_bytes=MAX_SEALED_BYTES, follow_links=False))
    except UserInputError:
        return False


def refuse_unless_replaceable(dest: Path, fix: str) -> None:
    """Before any work: refuse a destination that holds something this tool did not write (or that changed)."""
    if not dest.parent.is_dir():
        raise UserInputError(f"cannot write {dest}: {dest.parent} does not exist; create it first")
    if not replaceable(dest):
        raise UserInputError(f"{dest} exists and was not written by bsconv-export (or was changed since), so it "
                             f"is not replaced; {fix}")


def write_sealed(dest: Path, data: str | bytes, fix: str) -> Path:
    """Write already-sealed ``data`` to ``dest`` (atomically, never through a link), refused as
    :func:`refuse_unless_replaceable` says."""
    refuse_unless_replaceable(dest, fix)
    return write_bundle_file(dest.parent, dest.name, data)
