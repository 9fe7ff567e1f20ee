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


def show(view, title_style: str = "", status_colour: bool = True) -> None:
    """Draw a :class:`~exporter.report.views.View` (the same one ``report`` writes) with rich."""
    title = escape(view.title)
    for word, colour in COLOUR.items():   # the verdict word in the title, coloured
        title = title.replace(f": {word}", f": [{colour}]{word}[/{colour}]")
    title = title.replace(": FAILED", ": [red]FAILED[/red]")
    out.print(f"[{title_style}]{title}[/{title_style}]" if title_style else title, highlight=False)
    if view.head:    # a view of lines only (``info``) has no table
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


# --- progress on stderr, for long steps ---------------------------------------------------------

def stage_progress():
    """The export's progress printer: a line when a stage starts and when it ends (with its status, time
    and error); stages side by side, so every line says which are running at that moment."""
    running: list[str] = []

    def progress(stage: str, record) -> None:
        # stages side by side: every line says which are running at that moment
        if record is None:
            running.append(stage)
            beside = [s for s in running if s != stage]
            side = f"  (running beside {', '.join(beside)})" if beside else ""
            err.print(f"[dim]… {stage}{side}[/dim]")
            return
        if stage in running:
            running.remove(stage)
        colour = COLOUR[record.status.value]
        how = " from the stage cache" if record.reused else ""
        err.print(f"  {stage}: [{colour}]{record.status.value}[/{colour}]{how} in {record.seconds:.1f} s"
                  + (f" — {escape(record.error)}" if record.error else "")
                  + (f"  [dim](still running: {', '.join(running)})[/dim]" if running else ""), highlight=False)

    return progress


def check_progress(rec) -> None:
    """The check's progress: one line per record."""
    colour = COLOUR[rec.status.value]
    err.print(f"  check {rec.artifact} on {rec.runner}: [{colour}]{rec.status.value}[/{colour}]"
              + (f" (verified {rec.reused['first_verified_at']}, reused)" if rec.reused else "")
              + (f" — {escape(rec.reason)}" if rec.reason else ""), highlight=False)


def bench_progress(row: dict) -> None:
    """bench's progress: one line per timed (or skipped) configuration, and per paired ratio."""
    if row.get("paired"):
        lo, hi = row["ratio_ci95"]
        err.print(f"  {row['artifact']} vs {row['baseline']} ({row['baseline_runner']}), b{row['batch']}, interleaved: "
                  f"{row['ratio_median']:.2f}x [{lo:.2f}, {hi:.2f}]", highlight=False)
        return
    if row["status"] == "ok":
        extra = f", {row['vs_torch']['ratio_median']:.2f}x torch" if row.get("vs_torch") else ""
        err.print(f"  {row['artifact']} {row['provider']} b{row['batch']}: p50 {row['latency']['p50_ms']:.3f} ms{extra}",
                  highlight=False)
    else:
        err.print(f"  {row['artifact']} {row['provider']} b{row['batch']}: [yellow]skipped[/yellow] — {escape(row['reason'])}",
                  highlight=False)


def sweep_progress(row: dict, done: int, total: int) -> None:
    """sweep's progress: one line per finished job."""
    verdict = row.get("verdict") or "failed"
    colour = "green" if verdict in ("passed", "skipped") else "red"
    err.print(f"[{done}/{total}] {escape(str(row['out']))}: [{colour}]{escape(verdict)}[/{colour}]"
              f" in {row.get('seconds') or 0:.1f} s on {escape(str(row.get('worker') or '-'))}"
              + (f" — {escape(row['error'])}" if row.get("error") else ""), highlight=False)
