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


def human(n: float) -> str:
    """A count for people: 3.4M, 12.5K."""
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def models_view(rows: list[dict], *, profile: bool = False) -> View:
    """``models``: the zoo rows of :func:`models.profile.describe_models`."""
    head = ["name", "input", "classes", "in bsconv 0.4.0", *(["params", "MACs"] if profile else []), "description"]
    cells = [[r["name"], str(r["input_size"]), str(r["num_classes"]), "yes" if r["in_reference"] else "added",
              *([human(r["params"]), human(r["macs"])] if profile else []), r["description"]] for r in rows]
    return View(title=f"{len(rows)} zoo model{'s' if len(rows) != 1 else ''}", head=head, rows=cells)


def formats_view(rows: list[dict]) -> View:
    """``formats``: the format table as :func:`exporter.formats.describe_formats` gives it."""
    cells = [[r["name"] + (" *" if r["default"] else "") + ("" if r["selectable"] else " (auto)"), r["plugin"],
              r["file"], r["precision"], ", ".join(r["requires"]) or "-", ", ".join(r["verified_by"]),
              ", ".join(r["verified_on_arm64_by"]) or "-", ", ".join(r["timed_by"]) or "-",
              ", ".join(r["options"]) or "-", r["description"]] for r in rows]
    return View(title=f"{len(rows)} formats (bsconv-export export --formats …)", head=["format", "plugin", "file", "precision", "needs", "checked by",
                                       "on arm64 (--on)", "timed by", "options", "what"], rows=cells,
                notes=["* default; (auto) built whenever what it needs is built"])


def info_view(prof, loaded, convs: dict, preview: dict | None) -> View:
    """``info``: a model's size, input spec, checkpoint and convolutions, as lines (no table)."""
    spec = loaded.input_spec
    notes = [f"classes {spec.num_classes}  normalization {spec.normalization}  value range "
             f"{list(spec.value_range)}  labels {', '.join(spec.class_labels()[:10])}"
             f"{' ...' if spec.num_classes > 10 else ''}"]
    if loaded.sha256:
        notes.append(f"checkpoint {loaded.path}  sha256 {loaded.sha256[:16]}…")
    notes.append("convolutions: " + ", ".join(f"{n} {k}" for k, n in convs["counts"].items()))
    if convs["plain"]:
        notes.append(f"plain k×k convolutions left: {', '.join(convs['plain'][:8])}"
                     f"{' …' if len(convs['plain']) > 8 else ''}")
    if preview:
        notes.append(f"{preview['kind']} replacer would replace {len(preview['replaced'])} convolutions: params "
                     f"{preview['params_before']:,} → {preview['params_after']:,} ({preview['ratio']:.1%})")
    return View(title=f"{prof.arch}  input {prof.input_size}x{prof.input_size}  params {prof.params:,} "
                      f"({human(prof.params)})  MACs {prof.macs:,} ({human(prof.macs)})", head=[], rows=[], notes=notes)


def layers_view(prof) -> View:
    """``info --layers``: every layer's parameters, MACs and output shape."""
    return View(title="layers", head=["layer", "type", "params", "MACs", "output"],
                rows=[[layer.name, layer.type, f"{layer.params:,}", f"{layer.macs:,}", str(layer.output_shape)]
                      for layer in prof.layers])


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
        if r.tolerance:     # a record never judged (no file to check) names no gate
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


#: the metrics that say how much of its gate a verified file uses (1.0: at the bound)
GATE_USE = ("bound_used", "typical_bound_used", "slope_bound_used", "class_bias_bound_used", "fp16_bound_used",
            "fp16_typical_bound_used")


def ship_view(manifest, bench: BenchResult | None = None) -> View:
    """What to ship, per app platform (each format row says which ship its file): every artifact the
    check verified, with its bytes (and against the platform's largest verified file), its latency
    against the fp32 baseline (the paired ratio where bench paired it, else the ratio of medians of the
    same run, marked so) and how much of its gate it uses; the smallest and the fastest marked."""
    from ..formats import get_format
    records = manifest.check.records if manifest.check else []
    verified = {}
    for a in manifest.artifacts:
        fmt = get_format(a.format)
        mine = [r for r in records if r.artifact == a.format]
        if not (a.ok and fmt and fmt.platforms and mine and any(r.status.value == "ok" for r in mine)
                and all(r.status.value in ("ok", "skipped") for r in mine)):
            continue
        used = max((v for r in mine for k, v in (r.metrics or {}).items() if k in GATE_USE
                    and isinstance(v, (int, float))), default=None)
        verified[a.format] = (a, fmt, used, _latency_ratio(a.format, bench), mine[0].precision)
    rows, notes = [], []
    for platform in ("android", "ios"):
        here = [v for v in verified.values() if platform in v[1].platforms]
        if not here:
            continue
        largest = max(v[0].bytes or 0 for v in here) or 1
        smallest = min(here, key=lambda v: v[0].bytes or largest)[0].format
        timed = [v for v in here if v[3] is not None]
        fastest = min(timed, key=lambda v: v[3][0])[0].format if timed else None
        for a, fmt, used, ratio, precision in sorted(here, key=lambda v: v[0].bytes or 0):
            marks = [m for m, f in (("smallest", smallest), ("fastest", fastest)) if f == a.format]
            rows.append([platform, a.format, a.path or "-", f"{(a.bytes or 0) / 1e6:.2f} MB ({(a.bytes or 0) / largest:.2f}x)",
                         precision,
                         f"{ratio[0]:.2f}{'' if ratio[1] else ' (unpaired)'}" if ratio else "not timed here",
                         f"{used:.0%}" if used is not None else "-", ", ".join(marks)])
    if not rows:
        notes.append("no verified artifact for an app platform yet (export pte, ort, tflite or coreml and check it)")
    if verified and not bench:
        notes.append("latency: run 'bsconv-export bench BUNDLE' for the ratios to fp32")
    return View(title="What to ship: verified artifacts per app platform",
                head=["platform", "format", "file", "size (x largest)", "precision", "latency / fp32",
                      "gate used", "mark"], rows=rows, notes=notes)


def _latency_ratio(fmt: str, bench: BenchResult | None) -> tuple[float, bool] | None:
    """(artifact / fp32 baseline, paired?) at batch 1 on the CPU, from one bench run; None if not timed."""
    if bench is None:
        return None
    for p in bench.pairs:
        if p.artifact == fmt and p.batch == 1 and p.ratio is not None:
            return p.ratio.median, True
    from ..formats import FORMATS
    base = {f.name for f in FORMATS.values() if f.bench_baseline}
    base |= {f.name for f in FORMATS.values() if f.supersedes in base}   # the build bench used (simplified ONNX)
    p50 = {r.artifact: r.latency.p50_ms for r in bench.rows
           if r.ok and r.batch == 1 and r.provider == "cpu" and r.latency is not None}
    baseline = next((p.baseline for p in bench.pairs), None) or next((n for n in p50 if n in base), None)
    if fmt in p50 and baseline in p50 and p50[baseline] > 0:
        return (1.0, True) if fmt == baseline else (p50[fmt] / p50[baseline], False)
    return None


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
