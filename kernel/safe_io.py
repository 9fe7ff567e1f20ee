"""Reading files someone else wrote: regular files only, sizes bounded, JSON that cannot blow up.

A FIFO or device at a path the tool reads would block ``open`` forever; a link
is followed only where the caller allows it; a JSON text is bounded in size and
nesting depth (Python's parser recurses, so 5,000 ``[`` is a RecursionError),
and holds no NaN or Infinity, which JSON does not have but Python's parser accepts.
"""
from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import UserInputError

MAX_JSON_DEPTH = 64


def open_regular(path: str | os.PathLike, what: str, *, max_bytes: int | None = None,
                 follow_links: bool = True) -> int:
    """An open read-only descriptor of ``path``, refused unless it is a regular file (checked on the
    open descriptor, so a FIFO never blocks and a swapped file is not read) within ``max_bytes``."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UserInputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserInputError(f"{what} {path} is a folder, not a file") from None
    except OSError as e:
        if not follow_links and os.path.islink(path):
            raise UserInputError(f"{what} {path} is a symbolic link; refusing to follow it") from None
        raise UserInputError(f"{what} {path} cannot be read ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UserInputError(f"{what} {path} is not a regular file (a folder, pipe or device); pass a file")
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise UserInputError(f"{what} {path} is {st.st_size:,} bytes, over the {max_bytes:,} this tool reads")
    os.set_blocking(fd, True)
    return fd


def read_regular(path: str | os.PathLike, what: str, *, max_bytes: int, follow_links: bool = True) -> bytes:
    fd = open_regular(path, what, max_bytes=max_bytes, follow_links=follow_links)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:   # it grew after the check
        raise UserInputError(f"{what} {path} is over the {max_bytes:,} bytes this tool reads")
    return data


def is_regular(path: Path) -> bool:
    """True for a regular file that is not a link (nothing is opened)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def loads_json(text: str | bytes, where: str, fix: str) -> Any:
    """Parse untrusted JSON: one ``UserInputError`` naming ``where`` and ``fix`` for anything that is
    not plain, finite JSON nested at most :data:`MAX_JSON_DEPTH` deep."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise UserInputError(f"{where} is not UTF-8 JSON; {fix}") from None
    depth = _max_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise UserInputError(f"{where} nests {depth} levels deep, over the {MAX_JSON_DEPTH} this tool reads; {fix}")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise UserInputError(f"{where} is not valid JSON ({str(e)[:120]}); {fix}") from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _max_depth(text: str) -> int:
    """Deepest bracket nesting outside strings, counted without recursion."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def check_relative(rel: str, where: str = "manifest.json") -> PurePosixPath:
    """``rel`` as a path that stays inside its folder: relative, no '..', no backslash, NUL or '~'."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or "\0" in rel or rel.startswith("~"):
        raise UserInputError(f"{where}: artifact path {rel!r} leaves the bundle; refusing to read it")
    return p


def write_bundle_file(bundle: Path, name: str, data: str | bytes) -> Path:
    """Write ``bundle/name`` (a bundle's, or any folder's) atomically without following a link planted at that name."""
    check_relative(name, str(bundle))
    dest = bundle / name
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(name).name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
