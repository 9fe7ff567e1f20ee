"""A human-readable report of a bundle: artifacts, the check, and latencies with a plot.

The plot is a box plot per configuration (artifact · provider · batch) of every
stored latency sample, so the spread is visible, not only a median.
"""
from __future__ import annotations

import html
from pathlib import Path

from ..models.errors import UserInputError

from ..models.safe_io import loads_json, read_regular
from .manifest import (changed_since_export, check_recordable, read_manifest, record_bundle_file,
                       write_bundle_file)

PLOT_NAME = "report_latency.png"


def _plot(bench: dict, out: Path, bundle: Path) -> bool:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    rows = [r for r in bench["results"] if r.get("status") == "ok" and r.get("samples_ms")]
    if not rows:
        return False
    labels, data = [], []
    for r in rows:
        labels.append(f"{r['artifact']}\n{r['provider']} b{r['batch']}")
        data.append(r["samples_ms"])
        if r.get("vs_torch"):
            labels.append(f"torch eager\n(paired) b{r['batch']}")
            data.append(r["vs_torch"]["samples_ms"])
    fig = Figure(figsize=(max(5, 1.6 * len(labels)), 4), dpi=110)
    ax = fig.subplots()
    ax.boxplot(data, positions=range(len(data)), showfliers=True, widths=0.6)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(f"{(bench.get('model') or {}).get('arch', bench['target'])} on {bench['machine']['cpu']}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _write(out, buf.getvalue(), bundle)
    return True


def _write(out: Path, data: str | bytes, bundle: Path) -> Path:
    """Write a report file (never through a planted link); inside the bundle it is recorded as ours."""
    if out.parent.resolve() == bundle.resolve():
        return record_bundle_file(bundle, out.name, data)
    return write_bundle_file(out.parent, out.name, data)


def bench_rows(bench: dict) -> list[list[str]]:
    rows = []
    for r in bench["results"]:
        if r["status"] != "ok":
            rows.append([r["artifact"], r["provider"], str(r["batch"]), "skipped", "-", "-", "-", "-", r.get("reason", "")])
            continue
        lat = r["latency"]
        vs = r.get("vs_torch")
        ratio = f"{vs['ratio_median']:.2f} ({vs['ratio_ci95'][0]:.2f}–{vs['ratio_ci95'][1]:.2f})" if vs else "-"
        rows.append([r["artifact"], r["provider"], str(r["batch"]), str(r.get("threads") or "default"),
                     f"{lat['p50_ms']:.3f}", f"{lat['p90_ms']:.3f}", f"{lat['p99_ms']:.3f}",
                     f"{lat['throughput_per_s']:.0f}", ratio])
    return rows


BENCH_HEAD = ["artifact", "provider", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "items/s", "vs torch (95% CI)"]


MAX_BENCH_BYTES = 64 << 20


def _read_bench(path: Path) -> dict | None:
    """The bundle's bench.json, if it is one of ours; a foreign or broken one is an error."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise UserInputError(f"{path} is not a bench result of ours (a link or not a file); "
                             "delete it and run 'bsconv-export bench' again")
    bench = loads_json(read_regular(path, "the bench result", max_bytes=MAX_BENCH_BYTES, follow_links=False),
                       str(path), "run 'bsconv-export bench' again")
    from .bench import SCHEMA
    ok = (isinstance(bench, dict) and bench.get("schema") == SCHEMA and isinstance(bench.get("results"), list)
          and isinstance(bench.get("machine"), dict) and all(isinstance(r, dict) for r in bench["results"]))
    if not ok:
        raise UserInputError(f"{path} is not a {SCHEMA} result; run 'bsconv-export bench' again")
    try:
        bench_rows(bench)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise UserInputError(f"{path} has a malformed result row ({type(e).__name__}: {e}); "
                             "run 'bsconv-export bench' again") from None
    return bench


def _metric(record, key: str, spec: str) -> str:
    """A stored check metric, or "-" where a manifest (anyone's) does not hold it."""
    value = record.metrics.get(key)
    return format(value, spec) if value is not None else "-"


def write_report(bundle: str | Path, out: str | Path | None = None, fmt: str = "md") -> tuple[Path, list[str]]:
    """Write the report; return its path and the recorded files that changed since the export
    (non-empty: the report says the verdict is only the recorded one, and the CLI exits 1)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    changed = changed_since_export(bundle, manifest)
    if fmt not in ("md", "html"):
        raise UserInputError(f"--format must be md or html, not {fmt}")
    out = Path(out) if out else bundle / f"report.{fmt}"
    if not out.parent.is_dir():
        raise UserInputError(f"cannot write {out}: {out.parent} does not exist; create it first")
    bench = _read_bench(bundle / "bench.json")
    # in the bundle the plot is report_latency.png; beside a report written elsewhere it takes the
    # report's own name, so it never lands on a file of that fixed name the user did not ask for
    plot = out.parent / (PLOT_NAME if out.parent.resolve() == bundle.resolve() else f"{out.stem}_latency.png")
    if out.parent.resolve() == bundle.resolve():
        for name in (out.name, plot.name):   # both refused up front: never a plot without its report
            check_recordable(bundle, name)
    has_plot = bool(bench) and _plot(bench, plot, bundle)
    m = manifest.model
    art_head = ["format", "file", "bytes", "nodes", "status", "error"]
    art_rows = [[a.format, a.path or "-", str(a.bytes or "-"), str(a.nodes or "-"), a.status.value,
                 a.error or ""] for a in manifest.artifacts]
    chk = manifest.check
    chk_head = ["artifact", "runner", "status", "max abs", "torch fp32 err", "cosine min", "top-1 agreement",
                "accuracy", "note"]
    chk_rows = [[r.artifact, r.runner, r.status.value,
                 _metric(r, "max_abs", ".2g"), _metric(r, "torch_fp32_error_max", ".2g"),
                 _metric(r, "cosine_min", ".6f"), _metric(r, "top1_agreement", ".2%"),
                 f"{r.accuracy:.2%}" if r.accuracy is not None else "-", r.reason or ""]
                for r in (chk.records if chk else [])]
    verdict = (f"recorded verdict {manifest.verdict}, but files changed since: {', '.join(changed)}; run "
               "'bsconv-export check' on it" if changed else f"verdict: {manifest.verdict}")
    sections = [(f"Artifacts ({verdict})", art_head, art_rows)]
    if chk:
        sections.append((f"Equivalence check ({'passed' if chk.passed else 'FAILED'}, {chk.inputs})",
                         chk_head, chk_rows))
    if bench:
        mach = bench["machine"]
        sections.append((f"Latency on {mach.get('cpu')} ({mach.get('usable_cores')} cores, "
                         f"ISA {', '.join(map(str, mach.get('isa') or []))})", BENCH_HEAD, bench_rows(bench)))
    title = f"{m.arch} — {m.params:,} parameters, {m.macs:,} MACs"
    if fmt == "md":
        text = [f"# {title}", "", f"Reproduce: `{manifest.command}`", ""]
        for name, head, rows in sections:
            text += [f"## {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            text += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            text.append("")
        if has_plot:
            text += [f"![latency]({plot.name})", ""]
        elif not bench:
            text += ["No latency data: run `bsconv-export bench BUNDLE` first.", ""]
        body = "\n".join(text)
    else:
        parts = [f"<h1>{html.escape(title)}</h1><p>Reproduce: <code>{html.escape(manifest.command)}</code></p>"]
        for name, head, rows in sections:
            parts.append(f"<h2>{html.escape(name)}</h2><table border=1 cellpadding=3><tr>"
                         + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
                         + "</table>")
        if has_plot:
            parts.append(f'<img src="{html.escape(plot.name)}" alt="latency">')
        body = ("<!doctype html><meta charset=utf-8><title>" + html.escape(m.arch) + "</title>" + "\n".join(parts))
    return _write(out, body, bundle), changed
