"""Folders a user can choose that this tool writes into: it removes or replaces only what it made.

A folder named by a variable (the stage cache, ``BSCONV_EXPORT_CACHE``) may be any folder of the
user's — ``~`` by mistake. What the tool made carries a marker written when it was made: the stage
cache's folder a :data:`FOLDER_MARKER` at its root (written only into a folder the tool created or
found empty), each kit or environment built aside a :data:`MADE_MARKER` inside it. Anything without
its marker is never deleted, renamed or adopted: the command says so in one line (exit 2) instead.
Markers are read as regular files (a link or a FIFO is no marker) and compared by content.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserInputError
from .safe_io import is_regular

FOLDER_MARKER = ".bsconv-export-folder"
MADE_MARKER = ".bsconv-export-made"
MAX_MARKER_BYTES = 4096


def marker_text(what: str) -> bytes:
    return f"made by bsconv-export: {what}\n".encode()


def has_marker(folder: Path, name: str, text: bytes) -> bool:
    """``folder`` is a real folder (not a link) holding the regular file ``name`` whose bytes are ``text``."""
    marker = folder / name
    if folder.is_symlink() or not folder.is_dir() or not is_regular(marker):
        return False
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, MAX_MARKER_BYTES + 1) == text
    finally:
        os.close(fd)


def write_marker(folder: Path, name: str, text: bytes) -> None:
    """Create the marker; never through a link, never over an existing file."""
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text)
    finally:
        os.close(fd)


def tool_folder(path: Path, what: str, variable: str, *, create: bool) -> Path | None:
    """``path`` as a folder this tool owns: made here (with its marker) when missing or empty, accepted
    when it carries the marker. ``create=False``: None when it does not exist (nothing is made). A folder
    with other content and no marker is refused in one line naming it and ``variable``."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    text = marker_text(what)
    if has_marker(path, FOLDER_MARKER, text):
        return path
    if not os.path.lexists(path):
        if not create:
            return None
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserInputError(f"{what} folder {path} cannot be made ({e.strerror}); set {variable} to a "
                                 "folder you can write") from None
    elif path.is_symlink() or not path.is_dir():
        raise UserInputError(f"{what} folder {path} is {'a link' if path.is_symlink() else 'not a folder'}; "
                             f"set {variable} to a new or empty folder of its own")
    try:
        empty = not any(os.scandir(path))
    except OSError as e:
        raise UserInputError(f"{what} folder {path} cannot be read ({e.strerror}); set {variable} to a "
                             "folder you can write") from None
    if not empty and has_marker(path, FOLDER_MARKER, text):
        return path      # another process made and marked it between the first look and this one
    if not empty:
        raise UserInputError(f"{path} is not a {what} folder bsconv-export made (it holds other files and no "
                             f"{FOLDER_MARKER}), and the tool removes entries there: set {variable} to a new or "
                             "empty folder of its own")
    if not create:
        return None
    try:
        write_marker(path, FOLDER_MARKER, text)
    except FileExistsError:
        pass     # another process marked it first; checked below
    except OSError as e:
        raise UserInputError(f"{what} folder {path} cannot be written ({e.strerror}); set {variable} to a "
                             "folder you can write") from None
    if not has_marker(path, FOLDER_MARKER, text):
        raise UserInputError(f"{path} is not a {what} folder bsconv-export made; set {variable} to a new or "
                             "empty folder of its own")
    return path
