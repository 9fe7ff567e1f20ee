"""What the commands print: rich consoles sized for a terminal or a CI log, the views (:mod:`.views`)
drawn as tables, one strict JSON object for ``--json``, and the third-party log levels of the CLI's
process. Data goes to stdout (:data:`out`), progress and errors to stderr (:data:`err`).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table


def _log_width(stream) -> int | None:
    """Not a terminal (a CI log, a pipe): rich would squeeze tables to 80 columns and cut the numbers
    a CI reader needs to "m…"; give them room instead (COLUMNS still wins where it is set)."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 200


out = Console(soft_wrap=True, width=_log_width(sys.stdout))
err = Console(stderr=True, soft_wrap=True, width=_log_width(sys.stderr))
COLOUR = {"ok": "green", "failed": "red", "skipped": "yellow", "unverified": "red", "passed": "green"}


def quiet_third_party_logs() -> None:
    """The CLI process's choice (library code sets no global log level)."""
    # coremltools and onnxruntime's tools log version notices and Linux-only runtime
    # warnings at import; they say nothing about this run.
    for name in ("coremltools", "ort_format_model", "ort_format_model.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def emit_json(obj: Any) -> None:
    """One strict JSON object on stdout (NaN and infinities as null, as in manifest.json)."""
    from ..bundle.manifest_io import finite
    sys.stdout.write(json.dumps(finite(obj), indent=2, default=str, allow_nan=False) + "\n")


def human(n: float) -> str:
    """A count for people: 3.4M, 12.5K."""
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def show(view, title_style: str = "", status_colour: bool = True) -> None:
    """Draw a :class:`~exporter.views.View` (the same one ``report`` writes) with rich."""
    title = escape(view.title)
    for word, colour in COLOUR.items():   # the verdict word in the title, coloured
        title = title.replace(f": {word}", f": [{colour}]{word}[/{colour}]")
    title = title.replace(": FAILED", ": [red]FAILED[/red]")
    out.print(f"[{title_style}]{title}[/{title_style}]" if title_style else title, highlight=False)
    table = Table(*[Column(h, no_wrap=i < 2) for i, h in enumerate(view.head)])
    for row, status in zip(view.rows, view.status or [""] * len(view.rows)):
        cells = [escape(c) for c in row]
        if status_colour and status in COLOUR and "status" in view.head:
            i = view.head.index("status")
            cells[i] = f"[{COLOUR[status]}]{cells[i]}[/{COLOUR[status]}]"
        table.add_row(*cells)
    out.print(table)
    for note in view.notes:
        out.print(note, highlight=False)


def print_check_table(report) -> None:
    from .views import check_view
    show(check_view(report))


def print_bundle_table(manifest, bundle: Path) -> None:
    from .views import bundle_view
    show(bundle_view(manifest, bundle))
