"""The folders the tool makes outside the environment (the LiteRT converter's environment, the ARM64
kit, the stage cache): where they live (:func:`cache_root`), and how one is built beside its place and
renamed into it, replacing only a folder this tool made (:func:`built_aside`)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserInputError


def cache_root() -> Path:
    """The per-user cache folder for what is made outside the environment (the LiteRT converter's
    environment, the ARM64 kit): ``$BSCONV_EXPORT_CACHE``, else ``$XDG_CACHE_HOME/bsconv-export``,
    else ``~/.cache/bsconv-export``."""
    if os.environ.get("BSCONV_EXPORT_CACHE"):
        return Path(os.environ["BSCONV_EXPORT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "bsconv-export"


@contextlib.contextmanager
def built_aside(target: Path, what: str, keep_existing: Callable[[], bool] = lambda: False) -> Iterator[Path]:
    """A fresh folder beside ``target`` to build into. When the block succeeds it replaces ``target``
    whole (a half-made one included) — unless ``keep_existing()`` says a complete one appeared meanwhile,
    which is then kept; when the block fails the folder is removed and ``target`` is untouched. A command
    that fails is one line naming ``what``. Only a ``target`` this tool made (its marker inside) is ever
    replaced: anything else there is refused in one line, never removed."""
    from .owned import MADE_MARKER, has_marker, marker_text, write_marker
    text = marker_text(target.name)
    if os.path.lexists(target) and not has_marker(target, MADE_MARKER, text) and not keep_existing():
        raise UserInputError(f"{target} exists and bsconv-export did not make it (no {MADE_MARKER} inside), so it "
                             f"will not replace it: move it away, or set BSCONV_EXPORT_CACHE to another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        write_marker(building, MADE_MARKER, text)    # what may later replace it proves it is ours
        yield building
        if keep_existing():
            shutil.rmtree(building)
            return
        if os.path.lexists(target):
            if not has_marker(target, MADE_MARKER, text):
                raise UserInputError(f"{target} appeared while {what} was made and bsconv-export did not make "
                                     "it; it is left as it is")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        building.rename(target)
    except subprocess.CalledProcessError as e:
        shutil.rmtree(building, ignore_errors=True)
        raise UserInputError(f"making {what} failed ({' '.join(map(str, e.cmd[:4]))} exited {e.returncode}); "
                             "see the output above") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
