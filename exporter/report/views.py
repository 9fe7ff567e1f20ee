"""What the tables say, once, for every surface that shows them: the CLI (a terminal or a CI log)
and ``report`` (markdown, HTML). A :class:`View` is plain text cells; each surface only draws it."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..bench.result import BenchResult


@dataclass
class View:
    title: str
    head: list[str]
    rows: list[list[str]]
    status: list[str] = field(default_factory=list)   # each row's status word (a surface may colour it)
    notes: list[str] = field(default_factory=list)    # lines after the table


def _metric(metrics: dict, key: str, spec: str) -> str:
    """A stored metric, or "-" where a record (anyone's manifest) does not hold it."""
    value = metrics.get(key) if metrics else None
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def bundle_view(manifest, bundle) -> View:
    from ..formats import get_format
    m = manifest.model
    rows, status = [], []
    for a in manifest.artifacts:
        fmt = get_format(a.format)
        note = a.error or (fmt.note(a) if a.ok and fmt and fmt.note else "")
        rows.append([a.format, a.path or "-", f"{a.bytes / 1e6:.2f} MB" if a.bytes else "-", str(a.nodes or "-"),
                     a.status.value, note])
        status.append(a.status.value)
    return View(title=f"{m.arch} → {bundle}  ({m.params:,} params, {m.macs:,} MACs, input "
                      f"{manifest.export.input_shape}): {manifest.verdict}",
                head=["format", "file", "size", "nodes", "status", "note"], rows=rows, status=status,
                notes=[f"reproduce: {manifest.command}"])


def check_view(report) -> View:
    rows, status = [], []
    for r in report.records:
        m = r.metrics or {}
        note = r.reason or ""
        fd = r.first_divergence
        if fd and fd.get("found"):
            note += (f"; first divergence at {fd.get('torch_module')} (ONNX {fd.get('onnx_node')}, error "
                     f"{_metric(fd, 'max_abs_error', '.3g')})")
        acc = (f"{r.accuracy:.2%} ({r.reference_accuracy:.2%})"
               if r.accuracy is not None and r.reference_accuracy is not None else "-")
        rows.append([r.artifact, r.runner, r.status.value, _metric(m, "max_abs", ".2g"),
                     _metric(m, "torch_fp32_error_max", ".2g"), _metric(m, "cosine_min", ".6f"),
                     _metric(m, "top1_agreement", ".2%"), _metric(m, "top5_overlap", ".2%"), acc, note])
        status.append(r.status.value)
    notes = []
    ref = report.reference_error or {}
    if ref:
        notes.append(f"PyTorch fp32 vs float64 (the reference's own error): max "
                     f"{_metric(ref, 'torch_fp32_vs_fp64_max', '.2g')}, logits up to "
                     f"{_metric(ref, 'logit_scale_max', '.3g')}")
    used: dict[tuple[str, str], set[str]] = {}
    for r in report.records:
        used.setdefault((r.precision, r.tolerance), set()).add(r.target)
    notes.append("tolerances: " + "; ".join(
        f"{p}{'' if 'host' in where else ' on ' + ', '.join(sorted(where))} {t}" for (p, t), where in sorted(used.items())))
    return View(title=f"check on {report.samples} inputs ({report.inputs}): "
                      f"{'passed' if report.passed else 'FAILED'}",
                head=["artifact", "runner", "status", "max abs", "torch fp32 err", "cos min", "top-1 agr", "top-5",
                      "acc (torch)", "note"], rows=rows, status=status, notes=notes)


def bench_view(result: BenchResult) -> View:
    mach = result.machine
    versions = mach.get("versions") if isinstance(mach.get("versions"), dict) else {}
    rows, status, notes = [], [], []
    for r in result.rows:
        if not r.ok:
            rows.append([r.artifact, r.provider, str(r.batch), "-", "skipped", "-", "-", "-", "see below"])
            notes.append(f"skipped {r.artifact} {r.provider} b{r.batch}: {r.reason}")
        else:
            lat, vs = r.latency, r.vs_torch
            rows.append([r.artifact, r.provider, str(r.batch), str(r.threads or "default"), f"{lat.p50_ms:.3f}",
                         f"{lat.p90_ms:.3f}", f"{lat.p99_ms:.3f}", f"{lat.throughput_per_s:.0f}",
                         f"{vs.median:.2f} ({vs.low:.2f}–{vs.high:.2f})" if vs else "-"])
        status.append(r.status)
    for p in result.pairs:
        if p.ratio is not None:
            notes.append(f"{p.artifact} ({p.runner}) / {p.baseline} ({p.baseline_runner}), batch {p.batch}, "
                         f"{p.ratio.pairs} interleaved pairs: median ratio {p.ratio.median:.2f} "
                         f"(95% CI {p.ratio.low:.2f}–{p.ratio.high:.2f})")
        else:
            notes.append(f"{p.artifact} vs {p.baseline}: skipped — {p.reason}")
    return View(title=f"{mach.get('cpu')}, {mach.get('usable_cores')} cores, ISA "
                      f"{', '.join(map(str, mach.get('isa') or []))}; onnxruntime {versions.get('onnxruntime')}",
                head=["artifact", "provider", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "items/s",
                      "vs torch (95% CI)"], rows=rows, status=status, notes=notes)


def sweep_view(result) -> View:
    rows, status = [], []
    for r in result.rows:
        verdict = r.get("verdict") or "failed"
        arts = ", ".join(f"{k}:{v}" for k, v in (r.get("artifacts") or {}).items() if v != "ok")
        rows.append([str(r.get("job")), str(r.get("out")), verdict, f"{r.get('seconds') or 0:.1f}",
                     str(r.get("worker") or "-"), r.get("error") or r.get("reason") or arts or ""])
        status.append("ok" if verdict in ("passed", "skipped") else "failed")
    n_failed = len(result.failed)
    return View(title=f"sweep of {len(result.rows)} jobs on {result.workers} workers ({result.scheduler}): "
                      f"{'passed' if not n_failed else f'{n_failed} failed'} in {result.seconds:.0f} s",
                head=["job", "bundle", "verdict", "seconds", "worker", "note"], rows=rows, status=status)


def markdown(view: View, heading: str = "##") -> list[str]:
    lines = [f"{heading} {view.title}", "", "| " + " | ".join(view.head) + " |", "|" + "---|" * len(view.head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in view.rows]
    lines += [""] + [f"{n}  " for n in view.notes] + ([""] if view.notes else [])
    return lines


def html_table(view: View) -> str:
    import html
    e = html.escape
    return (f"<h2>{e(view.title)}</h2><table border=1 cellpadding=3><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in view.head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in view.rows)
            + "</table>" + "".join(f"<p>{e(n)}</p>" for n in view.notes))
