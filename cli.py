"""bsconv-export: from a trained BSConv MobileNet to checked, benchmarked mobile artifacts.

The CLI is thin: it parses options, calls ``models`` and ``exporter``, and prints.
Data goes to stdout (``--json`` prints one object); progress and errors go to
stderr. Exit codes: 0 success, 1 a stage failed, 2 bad usage or bad input.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from typer.core import TyperGroup

from .exporter.export.command_options import csv_values, parse_threads, with_format_options, with_model_options
from .exporter.formats import formats_help
from .exporter.report.console import (bench_progress, check_progress, emit_json, err, out, print_bundle_table,
                                      print_check_table, quiet_third_party_logs, show, stage_progress, sweep_progress)
from .kernel.errors import StageError, UserInputError
from .models.registry import DEFAULT_ARCH

#: errno values that mean "the environment refused" (a full disk, a read-only folder), not a bug
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EISDIR,
                      errno.ENOTDIR, errno.EXDEV, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTEMPTY, errno.ELOOP}


#: typer's (vendored) click usage error: an unknown command or option, a value out of range
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class ErrorPolicy(TyperGroup):
    """The one mapping from exceptions to exit codes, for every command: bad input (and an
    environment that refuses a write) → one line on stderr and exit 2; a failed stage or
    check → exit 1; anything else keeps its traceback (it is a bug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserInputError as e:
            _fail(str(e), 2)
        except UsageError as e:   # a bad flag or value: one line too, not click's box
            where = e.ctx.command_path if e.ctx is not None else "bsconv-export"
            _fail(f"{e.format_message()} (see '{where} --help')", 2)
        except StageError as e:
            _fail(str(e), 1)
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = f" {e.filename}" if e.filename else ""
            _fail(f"cannot write or read{where}: {e.strerror}; free space, fix permissions or choose another path", 2)


def _fail(message: str, code: int):
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


app = typer.Typer(cls=ErrorPolicy, help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)




@app.command("models")
def models_cmd(
    pattern: str = typer.Argument("*", help="Shell-style filter, e.g. '*v3_small*bsconvs*'."),
    profile: bool = typer.Option(False, "--profile", help="Also count parameters and MACs at each model's input size (slower)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """List the model zoo: names, input size, and whether the reference package has them."""
    from .exporter.report.views import models_view
    from .models.profile import describe_models
    rows = describe_models(pattern, profile=profile)
    if as_json:
        emit_json({"models": rows})
        return
    show(models_view(rows, profile=profile))


@app.command("formats")
def formats_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """The format table: what each --formats name builds, what checks it and what bench times."""
    from .exporter.formats import describe_formats, plugin_errors, plugins
    rows = describe_formats()
    if as_json:
        emit_json({"formats": rows, "plugins": [{"name": p.name, "module": p.module} for p in plugins()],
                   "plugin_errors": plugin_errors()})
        return
    from .exporter.report.views import formats_view
    show(formats_view(rows))
    for problem in plugin_errors():
        err.print(f"[yellow]not loaded:[/yellow] {escape(problem)}", highlight=False)


@app.command("setup")
def setup_cmd(
    plugin: str = typer.Argument(..., help="The plugin to prepare, e.g. litert (see the plugin column of 'bsconv-export formats'), or arm64 for the ARM64 kit."),
) -> None:
    """Prepare what a format plugin needs outside this environment (LiteRT: its converter's own
    environment), or the ARM64 kit that 'check --on arm64' runs artifacts with (~320 MB)."""
    from .exporter.formats import plugins
    if plugin == "arm64":
        from .exporter.arm64 import kit
        from .exporter.formats import arm64_parts
        folder = kit.setup(lambda message: err.print(message, highlight=False), arm64_parts())
        out.print(f"the ARM64 kit is ready: {folder}", highlight=False)
        return
    found = {p.name: p for p in plugins()}
    chosen = found.get(plugin)
    if chosen is None:
        raise UserInputError(f"no format plugin named {plugin!r}; installed: {', '.join(sorted(found))}")
    if chosen.setup is None:
        raise UserInputError(f"the {plugin} plugin needs no setup; its formats work as installed")
    out.print(chosen.setup(lambda message: err.print(message, highlight=False)), highlight=False)


@app.command("cache")
def cache_cmd(
    clear: bool = typer.Option(False, "--clear", help="Remove every entry (the next export makes every stage again)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The stage cache that 'export' reuses unchanged stages (and their checks) from: where it is,
    its entries and size, its limit; --clear empties it."""
    from .exporter.export.stagecache import StageCache
    cache = StageCache(create=False)
    removed, failed = cache.clear() if clear else (0, 0)
    summary = cache.summary()
    if as_json:
        emit_json({**summary, "removed": removed, "not_removed": failed})
        if failed:
            raise typer.Exit(1)
        return
    if clear:
        err.print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}"
                  + (f"; {failed} could not be removed (is the folder read-only?)" if failed else ""), highlight=False)
    out.print(f"{summary['folder']}: {summary['entries']} entries, {summary['bytes'] / 2**20:.1f} MiB of "
              f"{summary['max_bytes'] / 2**30:g} GiB (${summary['size_variable']})", highlight=False)
    for row in summary["by_format"]:
        out.print(f"  {row['format']}: {row['entries']} entries, {row['bytes'] / 2**20:.1f} MiB", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("info")
@with_model_options
def info_cmd(
    input_size: Optional[int] = typer.Option(None, "--input-size", min=1, help="Profile at this input size (default: the model's own; for --model/--program, the input spec's size)."),
    replace: Optional[str] = typer.Option(None, "--replace", help="Also report what BSConv's replacer would do: bsconvu or bsconvs (p=1/6 here)."),
    layers: bool = typer.Option(False, "--layers", help="Also print every layer's parameters and MACs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model_options: Optional[dict] = None,
) -> None:
    """Parameters and MACs of a model, in total and per layer, and which convolutions are BSConv."""
    from .models.profile import conv_inventory, profile_model
    from .models.replace import replacement_preview
    from .models.loaders import resolve_request
    from .models.request import request_from_options
    loaded = resolve_request(request_from_options(**model_options, input_size=input_size))
    prof = profile_model(loaded.model, input_size)
    convs = conv_inventory(loaded.model)
    preview = replacement_preview(loaded.model, replace) if replace else None
    if as_json:
        emit_json({**prof.to_dict(), "input_spec": loaded.input_spec.to_dict(), "source": loaded.source.to_dict(),
                   "checkpoint": str(loaded.path) if loaded.sha256 else None,
                   "checkpoint_sha256": loaded.sha256 or None, "convolutions": convs,
                   **({"replacement": preview} if preview else {})})
        return
    from .exporter.report.views import info_view, layers_view
    show(info_view(prof, loaded, convs, preview), title_style="bold")
    if layers:
        show(layers_view(prof))


@app.command("evaluate")
@with_model_options
def evaluate_cmd(
    input_size: Optional[int] = typer.Option(None, "--input-size", min=1, help="--model/--program: the input size."),
    data: Optional[Path] = typer.Option(None, "--data", help="A folder of images in class subfolders named by the model's labels (PNG, JPEG, WebP; read by the app's pixel rule), or an .npz with 'input' [N,C,H,W] float32 and 'label' [N]; default: the shipped held-out digits."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model_options: Optional[dict] = None,
) -> None:
    """Top-1 accuracy of the PyTorch model on labelled data."""
    from .models.loaders import resolve_request
    from .models.request import request_from_options
    from .models.train import accuracy, evaluation_data
    loaded = resolve_request(request_from_options(**model_options, input_size=input_size))
    x, y, source = evaluation_data(loaded, data)
    acc = accuracy(loaded.model, x, y)
    if as_json:
        emit_json({"arch": loaded.arch, "data": source, "samples": len(x), "top1": acc})
    else:
        out.print(f"{loaded.arch} on {source}: top-1 {acc:.2%} ({int(round(acc * len(x)))}/{len(x)})")


@app.command("train")
def train_cmd(
    output: Path = typer.Option(..., "--out", "-o", help="Where to write the checkpoint (.pt or .safetensors)."),
    arch: str = typer.Option(DEFAULT_ARCH, "--arch", help="Architecture to train (a CIFAR-flavour, 32x32 model fits the digits)."),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Passes over the 1,437 training digits."),
    seed: int = typer.Option(0, "--seed", help="Seed for weights, shuffling and augmentation."),
    lr: float = typer.Option(0.05, "--lr", min=0.0, help="Peak learning rate of the one-cycle schedule."),
    force: bool = typer.Option(False, "--force", help="Replace an existing checkpoint at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the result."),
) -> None:
    """Train a BSConv MobileNet on scikit-learn's bundled digits (no download), seeded and reproducible."""
    from .models.checkpoint import check_destination, save_checkpoint
    from .models.train import TrainConfig, train_digits
    cfg = TrainConfig(arch=arch, epochs=epochs, seed=seed, lr=lr)
    check_destination(output, force)

    def progress(epoch: int, row: dict) -> None:
        err.print(f"epoch {epoch:3d}/{epochs}  loss {row['loss']:.4f}  held-out top-1 {row['holdout_accuracy']:.2%}",
                  highlight=False)

    model, result = train_digits(cfg, progress=progress)
    save_checkpoint(model, output, extra={"train": {"config": result.to_dict()["config"],
                                                    "holdout_accuracy": result.holdout_accuracy}})
    if as_json:
        emit_json({**result.to_dict(), "checkpoint": str(output)})
    else:
        out.print(f"saved {output}: held-out top-1 {result.holdout_accuracy:.2%}, "
                  f"trained in {result.train_seconds:.0f} s")


def _terminate_cleanly(*_: Any) -> None:
    # SIGTERM (CI timeouts, kill) unwinds like Ctrl-C, so the half-built bundle is removed
    raise SystemExit(143)


ON_HELP = ("Also run every artifact that has an aarch64 runtime on it, under emulation, held to the same rules: "
           "arm64 (Cortex-A53 and Cortex-A76: without and with fp16 arithmetic) or arm64:CPU,… (a QEMU CPU model). "
           "Needs 'bsconv-export setup arm64' once.")


@app.command("export")
@with_model_options
@with_format_options
def export_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Bundle directory to create (built aside, renamed into place)."),
    formats: Optional[str] = typer.Option(None, "--formats", help=formats_help()),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=1, help="Square input size (default: the model's own; for --model/--program, the input spec's size)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Fixed batch size (CoreML takes 1)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="ONNX, ORT, pt2 and pte take any batch size (not with coreml; a .pte is planned for batches up to 15)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out (only one this tool wrote), once the new one passes its check."),
    replace_anyway: bool = typer.Option(False, "--replace-anyway", help="With --force: replace the old bundle even when the new one fails or is not checked."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the equivalence check: the bundle is then 'unverified', not passed (run 'check' later)."),
    on: Optional[str] = typer.Option(None, "--on", help="The check also runs on: " + ON_HELP),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Stages run side by side in this many worker processes (default: the usable cores; 1: one after another in this process). The files are the same either way."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Make every stage and run the whole check afresh: neither read nor fill the stage cache (see 'bsconv-export cache')."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    format_options: Optional[dict] = None,
    model_options: Optional[dict] = None,
) -> None:
    """Export a checkpoint to a bundle of mobile artifacts, then prove each one equivalent to PyTorch.

    A stage failure, a check failure or an unverified artifact exits 1; bad input exits 2
    with nothing written.
    """
    from .exporter.arm64 import parse_targets
    from .exporter.export.run import export_bundle
    from .exporter.check.run import CheckOptions
    from .exporter.formats import default_formats, parse_formats
    from .exporter.kit.options import ExportOptions
    from .models.loaders import resolve_request
    from .models.request import request_from_options
    quiet_third_party_logs()
    opts = ExportOptions(formats=parse_formats(formats) if formats is not None else default_formats(),
                         input_size=input_size, batch=batch, dynamic_batch=dynamic_batch, force=force,
                         replace_anyway=replace_anyway, **format_options)
    targets = parse_targets(on)
    if targets and no_check:
        raise UserInputError("--on says where the check runs; it cannot go with --no-check")
    loaded = resolve_request(request_from_options(**model_options, input_size=input_size))
    if loaded.untrained:
        err.print(f"note: no checkpoint given, exporting {loaded.arch} with untrained weights", highlight=False)

    signal.signal(signal.SIGTERM, _terminate_cleanly)
    result = export_bundle(loaded, out_dir, opts, progress=stage_progress(),
                           check=None if no_check else CheckOptions(on=targets), check_progress=check_progress,
                           jobs=jobs, cache=not no_cache)
    manifest = result.manifest
    if as_json:
        emit_json(manifest.to_dict())
    else:
        print_bundle_table(manifest, out_dir)
        if manifest.check is not None:
            print_check_table(manifest.check)
    if result.kept_old:
        err.print(f"[red]kept the existing bundle at {escape(str(out_dir))}[/red]: the new export is "
                  f"{manifest.verdict}, so it was not written (pass --replace-anyway to replace regardless)",
                  highlight=False)
    elif manifest.verdict == "unverified":
        err.print("note: the bundle is unverified (exported with --no-check); run 'bsconv-export check' on it",
                  highlight=False)
    raise typer.Exit(0 if result.ok or (no_check and manifest.verdict == "unverified") else 1)


@app.command("check")
def check_cmd(
    bundle: Path = typer.Argument(..., help="A bundle directory made by 'export'."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="The original checkpoint, if the manifest's path is not valid here."),
    model: Optional[str] = typer.Option(None, "--model", help="For a bundle exported with --model: the same package.module:factory, to confirm that importing and running it is intended (a bundle never imports code on its own)."),
    program: Optional[Path] = typer.Option(None, "--program", help="For a bundle exported with --program: the .pt2, if the manifest's path is not valid here (sha256 verified)."),
    data: Optional[Path] = typer.Option(None, "--data", help="A folder of images (PNG, JPEG, WebP; in class subfolders named by the model's labels for accuracy, or flat for agreement only), read by the app's pixel rule; or an .npz with 'input' [N,C,H,W] float32 in the model's value range (and optional 'label' [N]). Default: the shipped held-out digits for a digits model, else random inputs."),
    samples: int = typer.Option(32, "--samples", min=1, max=4096, help="Random inputs to draw when there is no real data (reduced-precision artifacts get at least 256)."),
    atol: Optional[float] = typer.Option(None, "--atol", min=0.0, help="Element-wise absolute tolerance for every artifact, replacing the default rules (see the README)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", min=0.0, help="Relative tolerance, times each sample's largest float64 logit, for every artifact."),
    localize: bool = typer.Option(False, "--localize", help="Report the first diverging layer of each fp32 ONNX artifact even when it passes."),
    on: Optional[str] = typer.Option(None, "--on", help=ON_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the check report as JSON."),
) -> None:
    """Prove every artifact of a bundle equivalent to the PyTorch original; exit 1 on any miss.

    With the default rules the result becomes the bundle's check; with --data, --samples,
    --atol or --rtol it is recorded beside it (user_checks) and never changes the export's verdict.
    """
    from .exporter.arm64 import parse_targets
    from .exporter.check.run import CheckOptions, recheck_bundle
    quiet_third_party_logs()
    opts = CheckOptions(data=str(data) if data else None, samples=samples, atol=atol, rtol=rtol, localize=localize,
                        on=parse_targets(on))
    report, manifest = recheck_bundle(bundle, opts, checkpoint=checkpoint, entry_point=model, program=program,
                                      progress=check_progress)
    failed_stages = [a.format for a in manifest.artifacts if a.status.value == "failed"]
    if as_json:
        emit_json({**report.to_dict(), "bundle_verdict": manifest.verdict, "failed_stages": failed_stages})
    else:
        print_check_table(report)
        if report.user_options:
            out.print(f"recorded as a re-check with {report.options}; the bundle's own verdict stays "
                      f"{manifest.verdict}", highlight=False)
    if failed_stages:
        err.print(f"[red]the bundle's stages {', '.join(failed_stages)} failed at export[/red]", highlight=False)
    raise typer.Exit(0 if report.passed and not failed_stages else 1)


@app.command("predict")
def predict_cmd(
    bundle: Path = typer.Argument(..., help="A bundle directory whose check passed."),
    images: list[Path] = typer.Argument(..., help="8-bit PNG images (grey, RGB or palette; alpha is ignored)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="The bundle's model file to run, by format name (see 'bsconv-export formats'); default: the bundle's first fp32 model file a runtime here can run (model.onnx in a default bundle)."),
) -> None:
    """Classify PNG images with a bundle alone, as an app would: one JSON line per image.

    The model file, its labels and its input spec (size, colour order, value range, mean and std)
    come from the bundle; the original model is not needed. The same contract as the C++ and
    JavaScript clients in clients/ (docs/bundle.md).
    """
    from .exporter.report.predict import predict
    quiet_third_party_logs()
    for p in predict(bundle, images, fmt):
        print(json.dumps(p.to_dict()), flush=True)




@app.command("bench")
def bench_cmd(
    target: Path = typer.Argument(..., help="A bundle directory, or one .onnx/.ort/.pte/.mlpackage artifact."),
    providers: str = typer.Option("cpu", "--providers", help="Comma-separated onnxruntime execution providers: cpu, cuda, tensorrt, coreml, … (unavailable ones are reported as skipped)."),
    batch: str = typer.Option("1", "--batch", help="Comma-separated batch sizes, e.g. 1,8."),
    threads: str = typer.Option("default", "--threads", help="Intra-op threads: a number, 'auto' (the fastest measured) or 'default' (onnxruntime's)."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed runs before measuring."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.1, help="Time limit per configuration, in seconds (default 5); stops earlier once stable."),
    iters: Optional[int] = typer.Option(None, "--iters", min=5, max=1_000_000, help="Exact number of timed runs instead of 'until stable' (not with --duration)."),
    vs_torch: bool = typer.Option(False, "--vs-torch", help="Interleave PyTorch eager in the same process and report the paired ratio (bundles only)."),
    model: Optional[str] = typer.Option(None, "--model", help="--vs-torch on a bundle exported with --model: the same package.module:factory, to confirm running it."),
    program: Optional[Path] = typer.Option(None, "--program", help="--vs-torch on a bundle exported with --program: the .pt2, if the manifest's path is not valid here."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write the results JSON here (default for a bundle: BUNDLE/bench.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results JSON."),
) -> None:
    """Latency p50/p90/p99, mean, std and throughput per artifact, runner, provider and batch size.

    A bundle's .pte is also interleaved with its ONNX file on onnxruntime (ABBA pairs in one
    process) and the paired ratio printed: quote that ratio, not two separate medians.
    """
    from .exporter.bench.bench import BenchOptions, usable_cores
    from .kernel.limits import check_batch, check_finite
    n_threads = parse_threads(threads, usable_cores())
    batches = csv_values(batch, int)
    for b in batches:
        check_batch(b)
    if duration is not None and iters is not None:
        raise UserInputError("--duration and --iters exclude each other: --iters times exactly that many runs; "
                             "drop one of them")
    duration = 5.0 if duration is None else check_finite(duration, "--duration", 0.1)
    opts = BenchOptions(providers=csv_values(providers), batches=batches, threads=n_threads, warmup=warmup,
                        duration=duration, iters=iters, vs_torch=vs_torch)
    original = None
    if vs_torch:
        if not target.is_dir():
            raise UserInputError("--vs-torch needs a bundle (it holds the checkpoint to run); pass the bundle directory")
        from .exporter.bundle.manifest_io import read_manifest
        from .models.loaders import reload_model
        recorded = read_manifest(target).model
        original = reload_model(recorded.source, recorded, entry_point=model, program=program)

    from .exporter.bench.bench import is_bundle, run_bench_and_save
    results, dest = run_bench_and_save(target, opts, original, bench_progress, out_file)
    timed = any(r["status"] == "ok" for r in results["results"])
    if as_json:
        emit_json(results)
        raise typer.Exit(0 if timed else 1)
    from .exporter.bench.result import BenchResult
    from .exporter.report.views import bench_view
    view = bench_view(BenchResult.from_dict(results))
    show(view)
    if is_bundle(target):
        from .exporter.bundle.manifest_io import read_manifest
        from .exporter.report.views import ship_view
        show(ship_view(read_manifest(target), BenchResult.from_dict(results)))
    if dest and timed:
        out.print(f"results: {dest}", highlight=False)
    if not timed:
        skipped = [n for n in view.notes if n.startswith("skipped ")]
        err.print("[red]nothing was timed[/red]: " + escape("; ".join(skipped) or "no configuration ran"),
                  highlight=False)
        raise typer.Exit(1)


@app.command("sweep")
def sweep_cmd(
    plan: Optional[Path] = typer.Argument(None, help="A plan (TOML): [defaults] and [[job]] tables whose keys are export's options with dashes as underscores, 'model' for the zoo name, and 'out'."),
    zoo: Optional[str] = typer.Option(None, "--zoo", help="Instead of a plan: every zoo model matching this pattern (writes OUT/sweep.toml, then runs it)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="With --zoo: the folder for the bundles and the plan."),
    formats: Optional[str] = typer.Option(None, "--formats", help="With --zoo: the formats of every job (default: export's)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="A Dask scheduler's address (tcp://host:8786); default: a local cluster on 127.0.0.1."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Local cluster: worker processes (default: one per usable core, one torch thread each)."),
    resume: bool = typer.Option(False, "--resume", help="Skip jobs whose bundle already passed with the same inputs (model and checkpoint hash, options, tool versions) and is unchanged."),
    results: Optional[Path] = typer.Option(None, "--results", help="Where to write the results JSON (default: sweep.json beside the plan)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    """Export and check many models at once on Dask: a local cluster sized to this machine, or a scheduler.

    Each job is exactly what 'export' does; a failed or lost job is a failed row (a lost one is
    retried once) and never stops the others. Exit 1 if any job failed.
    """
    from .exporter.formats import parse_formats
    from .kernel.sealed import refuse_unless_replaceable, seal_json, write_sealed
    from .exporter.sweep.plan import KEEP_RESULTS, read_plan, write_zoo_plan
    from .exporter.sweep.run import run_sweep
    from .exporter.report.views import sweep_view
    quiet_third_party_logs()
    if zoo is not None:
        if plan is not None or out_dir is None:
            raise UserInputError("--zoo takes --out DIR (where the plan and bundles go) and no PLAN")
        plan, dest = write_zoo_plan(zoo, out_dir, parse_formats(formats) if formats else None, results)
    elif plan is None:
        raise UserInputError("name a PLAN.toml, or --zoo PATTERN --out DIR")
    elif out_dir is not None or formats is not None:
        raise UserInputError("--out and --formats go with --zoo; a plan says them per job")
    jobs = read_plan(plan)
    dest = results or Path(plan).parent / "sweep.json"
    refuse_unless_replaceable(dest, KEEP_RESULTS)   # before the jobs run, not after

    signal.signal(signal.SIGTERM, _terminate_cleanly)   # unwinds like Ctrl-C: the workers are ended too
    result = run_sweep(jobs, scheduler=scheduler, workers=workers, resume=resume, progress=sweep_progress)
    write_sealed(dest, seal_json(result.to_dict()), KEEP_RESULTS)
    if as_json:
        emit_json(result.to_dict())
    else:
        show(sweep_view(result))
        out.print(f"results: {dest}", highlight=False)
    raise typer.Exit(1 if result.failed else 0)


@app.command("regress")
def regress_cmd(
    baseline: Path = typer.Option(..., "--baseline", help="Baseline bundle or .onnx, or a results.json from 'bench --out'."),
    candidate: Path = typer.Option(..., "--candidate", help="Candidate bundle or .onnx."),
    max_slowdown: float = typer.Option(0.05, "--max-slowdown", min=0.0, help="Allowed slowdown: fail only when the whole interval exceeds 1 + this."),
    confidence: float = typer.Option(0.95, "--confidence", min=0.5, max=0.999, help="Confidence of the interval on the latency ratio."),
    duration: float = typer.Option(20.0, "--duration", min=1.0, help="Seconds of interleaved timing."),
    provider: str = typer.Option("cpu", "--provider", help="Execution provider to time on."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads for both, at most the usable cores (default: onnxruntime's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """CI latency gate: exit 1 only when the candidate is slower than the baseline beyond noise."""
    from .exporter.bench.bench import usable_cores
    from .exporter.bench.regress import regress_ab, regress_stored
    from .kernel.limits import check_finite
    check_finite(max_slowdown, "--max-slowdown", 0.0)
    check_finite(confidence, "--confidence", 0.5)
    check_finite(duration, "--duration", 1.0)
    if threads is not None:
        parse_threads(str(threads), usable_cores())
    if baseline.suffix == ".json":
        result = regress_stored(baseline, candidate, provider=provider, duration=duration,
                                max_slowdown=max_slowdown, confidence=confidence)
    else:
        result = regress_ab(baseline, candidate, provider=provider, threads=threads, duration=duration,
                            max_slowdown=max_slowdown, confidence=confidence)
    for w in result["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False)
    if as_json:
        emit_json(result)
    else:
        out.print(f"baseline p50 {result['baseline_latency']['p50_ms']:.3f} ms, candidate p50 "
                  f"{result['candidate_latency']['p50_ms']:.3f} ms", highlight=False)
        out.print(result["summary"], highlight=False)
    raise typer.Exit(1 if result["decision"]["regression"] else 0)


@app.command("report")
def report_cmd(
    bundle: Path = typer.Argument(..., help="A bundle directory (run 'bench BUNDLE' first for latencies)."),
    fmt: str = typer.Option("md", "--format", help="md or html."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Report path (default BUNDLE/report.md or .html); the plot goes beside it."),
) -> None:
    """Write a Markdown or HTML summary of a bundle with a latency plot."""
    from .exporter.report.report import write_report
    path, changed = write_report(bundle, out_file, fmt)
    out.print(f"wrote {path}", highlight=False)
    if changed:
        err.print(f"[red]recorded verdict only: files changed since the export: {escape(', '.join(changed))}[/red]; "
                  "run 'bsconv-export check' on the bundle", highlight=False)
        raise typer.Exit(1)


def _refuse_undecodable_arguments(args: list[str]) -> None:
    """A path that is not UTF-8 (its bytes arrive as lone surrogates) cannot go into a manifest, a JSON
    line or a marker: one line, exit 2, before any work."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "backslashreplace").decode("ascii", "replace")
            err.print(f"[red]error:[/red] {escape(shown)} is not valid UTF-8 text; bundles and their manifests name "
                      "files in UTF-8: rename it", highlight=False)
            raise SystemExit(2) from None


def main() -> None:
    """The console entry point. When the command is done, the process ends without tearing down every
    module torch, coremltools and ExecuTorch loaded (1–1.5 s of a 3 s re-export): by then everything
    it wrote is closed and renamed into place, and stdout and stderr are flushed here first. An
    unexpected exception still ends the usual way, with its traceback."""
    try:
        _refuse_undecodable_arguments(sys.argv[1:])
        app()
        code: object = 0
    except SystemExit as e:
        code = e.code
    for stream in (sys.stdout, sys.stderr):
        try:
            if isinstance(code, str) and stream is sys.stderr:
                print(code, file=stream)
            stream.flush()
        except (OSError, ValueError):
            pass    # a reader that went away (`| head`): nothing more to say to it
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
