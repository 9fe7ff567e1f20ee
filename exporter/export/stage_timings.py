"""Each stage's measured seconds and peak memory, per model shape: ``stats.json`` in the stage cache's
folder, what the scheduler deals the stages out by (:func:`exporter.export.schedule.deal`)."""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ...kernel.errors import UserInputError
from ...kernel.safe_io import loads_json, read_regular

if TYPE_CHECKING:
    from .stagecache import StageCache

STATS_FILE = "stats.json"
MAX_STATS_BYTES = 1 << 20
#: the row of what the exporting process does beside its stages (the check's references)
OWN_WORK = "(references)"
#: measurements kept per stage and shape
KEPT = 5
#: a stage with no measurement yet is assumed to need this much memory (MiB) beside the others
DEFAULT_PEAK_MIB = 1536.0


class StageTimings:
    """Each stage's measured seconds and peak memory, per model shape (``stats.json`` in the stage cache):
    the scheduler's estimates are the medians of the last :data:`KEPT` measurements (one run's timing,
    taken beside other stages or alone, would tip the deal back and forth). Without a stage cache folder
    (``--no-cache``, or none made yet) nothing is read or written: every estimate is the default."""

    def __init__(self, folder: Path | None):
        self.path = folder / STATS_FILE if folder is not None else None
        self.data = {}
        if self.path is None:
            return
        try:
            data = loads_json(read_regular(self.path, "the stage timings", max_bytes=MAX_STATS_BYTES,
                                           follow_links=False), str(self.path), "it is rewritten")
            self.data = data if isinstance(data, dict) else {}
        except UserInputError:
            self.data = {}

    def _row(self, fmt: str, shape: str) -> dict:
        row = self.data.get(f"{fmt}|{shape}")
        return row if isinstance(row, dict) else {}

    def _values(self, fmt: str, shape: str, key: str) -> list[float]:
        v = self._row(fmt, shape).get(key)
        return [float(x) for x in v if isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0] \
            if isinstance(v, list) else []

    def seconds(self, fmt: str, shape: str) -> float:
        values = self._values(fmt, shape, "seconds")
        return statistics.median(values) if values else 0.0

    def peak_mib(self, fmt: str, shape: str) -> float:
        values = [v for v in self._values(fmt, shape, "peak_mib") if v > 0]
        return max(values) if values else DEFAULT_PEAK_MIB

    def record(self, fmt: str, shape: str, seconds: float, peak_mib: float | None) -> None:
        row = {"seconds": (self._values(fmt, shape, "seconds") + [round(seconds, 3)])[-KEPT:]}
        peaks = self._values(fmt, shape, "peak_mib") + ([float(peak_mib)] if peak_mib else [])
        if peaks:
            row["peak_mib"] = peaks[-KEPT:]
        self.data[f"{fmt}|{shape}"] = row

    def save(self) -> None:
        if self.path is None:
            return
        try:   # a new file renamed over the old: never written through a link or into a FIFO
            tmp = self.path.with_name(f".{STATS_FILE}.{os.getpid()}.{time.monotonic_ns()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.data, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass   # estimates only: a read-only cache costs scheduling quality, nothing else


def record_own_work(cache: "StageCache | None", shape: tuple[int, ...], seconds: float) -> None:
    """Remember how long this process's own work beside the stages took (the next deal counts it)."""
    stats = StageTimings(cache.root if cache is not None else None)
    stats.record(OWN_WORK, "x".join(map(str, shape)), seconds, None)
    stats.save()
