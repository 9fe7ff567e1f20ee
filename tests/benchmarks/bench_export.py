"""Benchmark: wall time and peak memory of a full export (not a test; run with `make bench-export`).

Each run is a fresh `bsconv-export export` process (every format, then the
equivalence check unless --no-check), so the numbers include imports, as a user
sees them. Peak memory is the child's max RSS. Children run one after another,
so the max over them is each run's peak.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(arch: str, size: int, out: Path, check: bool = True) -> tuple[float, float]:
    cmd = [str(Path(sys.executable).with_name("bsconv-export")), "export", arch, "--input-size", str(size),
           "--out", str(out), "--force", "--json"] + ([] if check else ["--no-check", "--replace-anyway"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"export failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    # ru_maxrss of children is the max over all finished children (KiB on Linux).
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return wall, peak


def check_run(bundle: Path) -> float:
    """Wall time of ``bsconv-export check BUNDLE`` in a fresh process."""
    cmd = [str(Path(sys.executable).with_name("bsconv-export")), "check", str(bundle), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"check failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="mobilenetv2_w1_bsconvs_p1d6")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-check", action="store_true", help="time the export without its equivalence check")
    args = ap.parse_args()
    walls, peaks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            wall, peak = one_run(args.arch, args.input_size, Path(tmp) / "bundle", not args.no_check)
            walls.append(wall)
            peaks.append(peak)
            print(f"run {i + 1}: {wall:.1f} s, peak RSS so far {peak:.0f} MiB", file=sys.stderr)
        checks = [] if args.no_check else [check_run(Path(tmp) / "bundle") for _ in range(args.runs)]
        manifest = json.loads((Path(tmp) / "bundle" / "manifest.json").read_text())
    check_records = {f"{r['artifact']}/{r['runner']}": round(r["seconds"], 2)
                     for r in (manifest.get("check") or {}).get("results", [])}
    stages = {a["format"]: round(a["seconds"], 2) for a in manifest["artifacts"]}
    print(json.dumps({"arch": args.arch, "input_size": args.input_size, "runs": args.runs, "check": not args.no_check,
                      "wall_seconds_median": round(statistics.median(walls), 2),
                      "wall_seconds_all": [round(w, 2) for w in walls],
                      "peak_rss_mib_max": round(max(peaks)), "last_run_stage_seconds": stages,
                      "check_command_seconds_median": round(statistics.median(checks), 2) if checks else None,
                      "check_command_seconds_all": [round(c, 2) for c in checks],
                      "last_check_seconds_per_runner": check_records}, indent=2))


if __name__ == "__main__":
    main()
