"""``bench.json`` as a type: what ``bench`` writes, read back with every field it shows checked.

A results file is untrusted input like a manifest (it may come with a bundle someone sent):
:meth:`BenchResult.from_dict` checks the schema version, bounds every list and string, and
types every field the tables and ``regress`` read; anything else is one line naming the file
and the fix. ``raw`` keeps the whole object for ``--json`` and for writing it back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...kernel.errors import UserInputError
from ...kernel.safe_io import loads_json, read_regular

SCHEMA = "bsconv-export-bench/1"
MAX_BENCH_BYTES = 64 << 20
MAX_ROWS = 10_000
MAX_SAMPLES = 1_000_000
MAX_TEXT = 2_000


class _Bad(ValueError):
    pass


def _num(d: dict, key: str, *, optional: bool = False) -> float | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise _Bad(f"'{key}' must be a finite number")
    return float(v)


def _text(d: dict, key: str, *, optional: bool = False) -> str | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise _Bad(f"'{key}' must be text")
    return v


def _int(d: dict, key: str, *, optional: bool = False) -> int | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1 << 31:
        raise _Bad(f"'{key}' must be a count")
    return v


def _obj(d: dict, key: str, *, optional: bool = False) -> dict | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, dict):
        raise _Bad(f"'{key}' must be an object")
    return v


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_per_s: float

    @classmethod
    def from_dict(cls, d: dict) -> "Latency":
        return cls(*(_num(d, k) for k in ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s")))


@dataclass(frozen=True)
class Ratio:
    """A median of paired ratios with its 95 % interval."""
    median: float
    low: float
    high: float
    pairs: int

    @classmethod
    def from_dict(cls, d: dict) -> "Ratio":
        ci = d.get("ratio_ci95")
        if not (isinstance(ci, list) and len(ci) == 2):
            raise _Bad("'ratio_ci95' must be [low, high]")
        low, high = (_num({"v": v}, "v") for v in ci)
        return cls(_num(d, "ratio_median"), low, high, _int(d, "pairs"))


@dataclass(frozen=True)
class BenchRow:
    """One artifact × runner × provider × batch."""
    artifact: str
    runner: str
    provider: str
    batch: int
    status: str                      # "ok" or "skipped"
    reason: str | None = None
    threads: int | str | None = None
    latency: Latency | None = None
    vs_torch: Ratio | None = None
    samples_ms: tuple[float, ...] = ()
    torch_samples_ms: tuple[float, ...] = ()   # the paired eager PyTorch run's (--vs-torch)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, d: Any) -> "BenchRow":
        if not isinstance(d, dict):
            raise _Bad("a result row must be an object")
        status = _text(d, "status")
        if status not in ("ok", "skipped"):
            raise _Bad(f"status {status!r} is neither ok nor skipped")
        threads = d.get("threads")
        if threads is not None and not (isinstance(threads, str) and len(threads) <= 50) and not (
                isinstance(threads, int) and not isinstance(threads, bool) and 0 < threads <= 4096):
            raise _Bad("'threads' must be a thread count")
        samples = d.get("samples_ms", [])
        if not isinstance(samples, list) or len(samples) > MAX_SAMPLES:
            raise _Bad("'samples_ms' must be a list of latencies")
        vs = _obj(d, "vs_torch", optional=True)
        torch_samples = (vs or {}).get("samples_ms", [])
        if not isinstance(torch_samples, list) or len(torch_samples) > MAX_SAMPLES:
            raise _Bad("'vs_torch.samples_ms' must be a list of latencies")
        return cls(artifact=_text(d, "artifact"), runner=_text(d, "runner", optional=True) or "",
                   provider=_text(d, "provider"), batch=_int(d, "batch"), status=status,
                   reason=_text(d, "reason", optional=True), threads=threads,
                   latency=Latency.from_dict(_obj(d, "latency")) if status == "ok" else None,
                   vs_torch=Ratio.from_dict(vs) if vs is not None else None,
                   samples_ms=tuple(_num({"v": v}, "v") for v in samples),
                   torch_samples_ms=tuple(_num({"v": v}, "v") for v in torch_samples))


@dataclass(frozen=True)
class PairRow:
    """One artifact timed interleaved with the baseline (see bench.pair_with_baseline)."""
    artifact: str
    baseline: str
    batch: int
    status: str
    runner: str = ""
    baseline_runner: str = ""
    reason: str | None = None
    ratio: Ratio | None = None

    @classmethod
    def from_dict(cls, d: Any) -> "PairRow":
        if not isinstance(d, dict):
            raise _Bad("a paired row must be an object")
        status = _text(d, "status")
        return cls(artifact=_text(d, "artifact"), baseline=_text(d, "baseline"), batch=_int(d, "batch"),
                   status=status, runner=_text(d, "runner", optional=True) or "",
                   baseline_runner=_text(d, "baseline_runner", optional=True) or "",
                   reason=_text(d, "reason", optional=True),
                   ratio=Ratio.from_dict(d) if status == "ok" else None)


@dataclass
class BenchResult:
    target: str
    machine: dict
    rows: list[BenchRow]
    pairs: list[PairRow]
    fingerprint: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def timed(self) -> bool:
        return any(r.ok for r in self.rows)

    @classmethod
    def from_dict(cls, d: Any, where: str = "the bench result") -> "BenchResult":
        fix = "run 'bsconv-export bench' again"
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise UserInputError(f"{where} is not a {SCHEMA} result; {fix}")
        try:
            results, paired = d.get("results"), d.get("paired", [])
            if not isinstance(results, list) or not isinstance(paired, list) or len(results) + len(paired) > MAX_ROWS:
                raise _Bad(f"'results' and 'paired' must be lists of at most {MAX_ROWS} rows")
            machine = _obj(d, "machine")
            for key in ("cpu", "arch", "os"):
                if machine.get(key) is not None:
                    _text(machine, key)
            isa = machine.get("isa", [])
            if not isinstance(isa, list) or not all(isinstance(v, str) and len(v) < 50 for v in isa[:64]):
                raise _Bad("'machine.isa' must be a list of flags")
            if machine.get("usable_cores") is not None:
                _int(machine, "usable_cores")
            return cls(target=_text(d, "target", optional=True) or "", machine=machine,
                       rows=[BenchRow.from_dict(r) for r in results], pairs=[PairRow.from_dict(p) for p in paired],
                       fingerprint=_obj(d, "fingerprint", optional=True) or {}, raw=d)
        except _Bad as e:
            raise UserInputError(f"{where} has a malformed field ({e}); {fix}") from None

    @classmethod
    def read(cls, path: str | Path, fix: str = "run 'bsconv-export bench' again") -> "BenchResult":
        path = Path(path)
        data = loads_json(read_regular(path, "the bench result", max_bytes=MAX_BENCH_BYTES, follow_links=False),
                          str(path), fix)
        return cls.from_dict(data, str(path))
