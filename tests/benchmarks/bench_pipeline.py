"""Benchmark: an export with its stages side by side against one after another, and an unchanged re-export
(not a test; run with `make bench-pipeline`).

Each run is a fresh `bsconv-export export` process (default formats, then the check), so the numbers
include imports, as a user sees them. The two settings alternate (--jobs 1, --jobs 2, --jobs 1, ...)
and the ratio is taken pair by pair, so a machine whose speed drifts still compares like with like;
both run with --no-cache. Memory is the whole process tree's: the largest sum, over the export and
its worker processes, of each one's proportional set size (shared library pages counted once) and of
its resident set size (counted in every process), sampled every 50 ms in two runs of each setting
apart from the timed ones (sampling costs CPU).

The re-export runs the same command with the stage cache on, after one run that fills it, in a
cache folder of its own; it must reuse every stage and its check.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def memory_mib(pids: list[int]) -> tuple[float, float]:
    """(sum of PSS, sum of RSS) of ``pids`` in MiB."""
    pss = rss = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except OSError:
            pass
    return pss / 1024, rss / 1024


def timed(cmd: list[str], env: dict, sample_memory: bool = False) -> dict:
    """One run: its wall time, or (``sample_memory``) its process tree's peak memory — reading every
    process's page tables 20 times a second costs CPU, so the timed runs are not sampled."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0, 0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, rss = memory_mib(tree(proc.pid))
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            done.wait(0.05)

    t0 = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    out, errtext = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    if sample_memory:
        sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {errtext.strip()[-800:]}")
    manifest = json.loads(out)
    return {"wall": wall, "pss_mib": peak[0], "rss_mib": peak[1], "manifest": manifest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="mobilenetv2_w1_bsconvs_p1d6")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--reexports", type=int, default=5)
    args = ap.parse_args()
    cli = str(Path(sys.executable).with_name("bsconv-export"))
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    env.pop("BSCONV_EXPORT_JOBS", None)
    from bsconv_export.kernel.machine import machine_info
    from bsconv_export.exporter.formats import tool_versions
    info = machine_info(tool_versions())
    with tempfile.TemporaryDirectory() as tmp:
        env["BSCONV_EXPORT_STAGE_CACHE"] = str(Path(tmp) / "cache")

        def export(jobs: int | None, out: str, cache: bool, sample_memory: bool = False) -> dict:
            cmd = [cli, "export", args.arch, "--input-size", str(args.input_size), "--out", str(Path(tmp) / out),
                   "--force", "--json"] + ([] if cache else ["--no-cache"]) + ([f"--jobs={jobs}"] if jobs else [])
            return timed(cmd, env, sample_memory)

        for _ in range(2):                 # warm-ups: the page cache, and each stage's measured time
            export(2, "warm", cache=False)
        memory = [(export(1, "one", False, True), export(2, "two", False, True)) for _ in range(2)]
        print(f"memory: tree PSS --jobs 1 {max(m[0]['pss_mib'] for m in memory):.0f} MiB, --jobs 2 "
              f"{max(m[1]['pss_mib'] for m in memory):.0f} MiB", file=sys.stderr)
        pairs = []
        for i in range(args.pairs):
            one, two = export(1, "one", cache=False), export(2, "two", cache=False)
            pairs.append((one, two))
            print(f"pair {i + 1}: --jobs 1 {one['wall']:.1f} s, --jobs 2 {two['wall']:.1f} s "
                  f"(ratio {two['wall'] / one['wall']:.2f})", file=sys.stderr)
        export(None, "re", cache=True)     # fills the cache
        again = []
        for i in range(args.reexports):
            r = export(None, "re", cache=True)
            reused = [a["format"] for a in r["manifest"]["artifacts"] if a.get("reused")]
            checks = [c for c in r["manifest"]["check"]["results"] if c.get("reused")]
            if len(reused) != len(r["manifest"]["artifacts"]) or len(checks) != len(r["manifest"]["check"]["results"]):
                sys.exit(f"re-export {i + 1} did not reuse everything: {reused}")
            again.append(r)
            print(f"re-export {i + 1}: {r['wall']:.2f} s", file=sys.stderr)
    med = statistics.median
    stages = {a["format"]: {"seconds": round(a["seconds"], 2), "peak_rss_mib": a["details"].get("peak_rss_mib")}
              for a in pairs[-1][1]["manifest"]["artifacts"]}
    print(json.dumps({
        "arch": args.arch, "input_size": args.input_size, "pairs": args.pairs,
        "machine": {k: info[k] for k in ("cpu", "usable_cores", "isa")},
        "jobs1_wall_seconds_median": round(med(p[0]["wall"] for p in pairs), 2),
        "jobs2_wall_seconds_median": round(med(p[1]["wall"] for p in pairs), 2),
        "jobs2_over_jobs1_ratio_median": round(med(p[1]["wall"] / p[0]["wall"] for p in pairs), 3),
        "ratios": [round(p[1]["wall"] / p[0]["wall"], 3) for p in pairs],
        "jobs1_tree_pss_mib_max": round(max(m[0]["pss_mib"] for m in memory)),
        "jobs2_tree_pss_mib_max": round(max(m[1]["pss_mib"] for m in memory)),
        "jobs1_tree_rss_mib_max": round(max(m[0]["rss_mib"] for m in memory)),
        "jobs2_tree_rss_mib_max": round(max(m[1]["rss_mib"] for m in memory)),
        "reexport_wall_seconds_median": round(med(r["wall"] for r in again), 2),
        "reexport_wall_seconds_all": [round(r["wall"], 2) for r in again],
        "jobs2_last_run_stages": stages,
    }, indent=2))


if __name__ == "__main__":
    main()
