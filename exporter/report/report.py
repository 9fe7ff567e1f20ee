"""A human-readable report of a bundle: artifacts, the check, and latencies with a plot.

The plot is a box plot per configuration (artifact · provider · batch) of every
stored latency sample, so the spread is visible, not only a median.
"""
from __future__ import annotations

import html
from pathlib import Path

from ...kernel.errors import UserInputError

from ..bench.result import BenchResult
from ..bundle.on_disk import changed_since_export, check_recordable, record_bundle_file
from ..bundle.manifest_io import read_manifest
from ...kernel.sealed import refuse_unless_replaceable, seal_png, seal_text, write_sealed
from .views import bench_view, bundle_view, check_view, html_table, markdown, ship_view

PLOT_NAME = "report_latency.png"


def _plot(bench: BenchResult, title: str, out: Path, bundle: Path) -> bool:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    rows = [r for r in bench.rows if r.ok and r.samples_ms]
    if not rows:
        return False
    labels, data = [], []
    for r in rows:
        labels.append(f"{r.artifact}\n{r.provider} b{r.batch}")
        data.append(r.samples_ms)
        if r.torch_samples_ms:
            labels.append(f"torch eager\n(paired) b{r.batch}")
            data.append(r.torch_samples_ms)
    fig = Figure(figsize=(max(5, 1.6 * len(labels)), 4), dpi=110)
    ax = fig.subplots()
    ax.boxplot(data, positions=range(len(data)), showfliers=True, widths=0.6)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(f"{title} on {bench.machine.get('cpu')}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _write(out, buf.getvalue(), bundle)
    return True


KEEP = "move it away, or write elsewhere with --out"


def _write(out: Path, data: str | bytes, bundle: Path) -> Path:
    """Write a report file (never through a planted link); inside the bundle it is recorded as ours,
    elsewhere sealed (and only a sealed file of ours is replaced: see exporter/sealed.py)."""
    if out.parent.resolve() == bundle.resolve():
        return record_bundle_file(bundle, out.name, data)
    sealed = seal_png(data) if isinstance(data, bytes) else seal_text(data, html_comment=True)
    return write_sealed(out, sealed, KEEP)


def _read_bench(path: Path) -> BenchResult | None:
    """The bundle's bench.json, if it is one of ours; a foreign or broken one is an error."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise UserInputError(f"{path} is not a bench result of ours (a link or not a file); "
                             "delete it and run 'bsconv-export bench' again")
    return BenchResult.read(path)


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
    for name in (out.name, plot.name):   # both refused up front: never a plot without its report
        if out.parent.resolve() == bundle.resolve():
            check_recordable(bundle, name)
        else:
            refuse_unless_replaceable(out.parent / name, KEEP)
    has_plot = bool(bench) and _plot(bench, manifest.model.arch, plot, bundle)
    m = manifest.model
    artifacts = bundle_view(manifest, bundle)
    artifacts.title = (f"Artifacts (recorded verdict {manifest.verdict}, but files changed since: {', '.join(changed)}; "
                       "run 'bsconv-export check' on it)" if changed else f"Artifacts (verdict: {manifest.verdict})")
    artifacts.notes = []
    views = [artifacts]
    if manifest.check:
        check = check_view(manifest.check)
        check.title = f"Equivalence check: {check.title}"
        views.append(check)
    if bench:
        latency = bench_view(bench)
        latency.title = f"Latency on {latency.title}"
        views.append(latency)
    if manifest.check and not changed:
        views.append(ship_view(manifest, bench))
    title = f"{m.arch} — {m.params:,} parameters, {m.macs:,} MACs"
    if fmt == "md":
        text = [f"# {title}", "", f"Reproduce: `{manifest.command}`", ""]
        for view in views:
            text += markdown(view)
        if has_plot:
            text += [f"![latency]({plot.name})", ""]
        elif not bench:
            text += ["No latency data: run `bsconv-export bench BUNDLE` first.", ""]
        body = "\n".join(text)
    else:
        parts = [f"<h1>{html.escape(title)}</h1><p>Reproduce: <code>{html.escape(manifest.command)}</code></p>"]
        parts += [html_table(view) for view in views]
        if has_plot:
            parts.append(f'<img src="{html.escape(plot.name)}" alt="latency">')
        body = ("<!doctype html><meta charset=utf-8><title>" + html.escape(m.arch) + "</title>" + "\n".join(parts))
    return _write(out, body, bundle), changed
