"""Stages side by side in worker processes, and the stage cache (exporter/export/: schedule.py, workers.py, stagecache.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.formats import reload_plugins
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.kit.records import Status
from bsconv_export.exporter.export.stagecache import StageCache
from bsconv_export.models.checkpoint import load_checkpoint

FORMATS = ("pt2", "onnx", "ort", "coreml", "pte")
#: onnxruntime's .ort converter writes a different flatbuffer on every run (two runs in one process
#: differ too), so its file is compared by its check, not its bytes
NOT_REPRODUCIBLE = {"model.ort", "model.required_operators.config", "mobile_usability.txt"}


def files(bundle: Path) -> dict[str, bytes]:
    return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in sorted(bundle.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def export(shipped, out: Path, formats=FORMATS, jobs=None, cache=True, **options):
    return export_bundle(shipped, out, ExportOptions(formats=formats, force=True, **options), check=CheckOptions(),
                         jobs=jobs, cache=cache)


def cli_export(out: Path, jobs: int, formats=FORMATS) -> dict:
    """``bsconv-export export`` of the shipped model in a fresh process, as a user runs it: its manifest."""
    cli = str(Path(sys.executable).with_name("bsconv-export"))
    p = subprocess.run([cli, "export", "--out", str(out), "--formats", ",".join(formats), "--jobs", str(jobs),
                        "--no-cache", "--json"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    # a worker's progress-bar lock is no named semaphore left for the parent's resource tracker to report
    assert "leaked semaphore" not in p.stderr, p.stderr[-2000:]
    return json.loads(p.stdout)


@pytest.mark.slow
def test_jobs_two_makes_the_same_bundle_as_jobs_one(tmp_path, shared_bundle):
    """The default formats exported in two worker processes by a fresh CLI process, against the same
    formats exported in process, one stage after another (the shared bundle: jobs 1, as every test's)."""
    reference = shared_bundle("every-format")
    one = json.loads((reference / "manifest.json").read_text())
    assert sorted(r["format"] for r in one["artifacts"]) == sorted(
        FORMATS + ("onnx-simplified",)), "the shared bundle is no longer the default formats"
    two = cli_export(tmp_path / "two", jobs=2)
    assert one["verdict"] == two["verdict"] == "passed"
    a, b = files(reference), files(tmp_path / "two")
    assert sorted(a) == sorted(b)
    differ = sorted(name for name in a if a[name] != b[name])
    assert set(differ) <= NOT_REPRODUCIBLE, differ
    # records in the table's order either way, the same check results
    assert [r["format"] for r in one["artifacts"]] == [r["format"] for r in two["artifacts"]]
    key = [(r["artifact"], r["runner"], r["status"]) for r in one["check"]["results"]]
    assert key == [(r["artifact"], r["runner"], r["status"]) for r in two["check"]["results"]]
    for r1, r2 in zip(one["check"]["results"], two["check"]["results"]):
        if r1["artifact"] != "ort" and r1["metrics"]:
            assert r1["metrics"]["max_abs"] == r2["metrics"]["max_abs"], r1["artifact"]
    # the stages side by side measured their memory
    assert all(r["details"].get("peak_rss_mib", 0) > 0 for r in two["artifacts"])


TOY_PLUGIN = '''
from bsconv_export.exporter.formats import Format, Plugin


def explode(ctx):
    raise RuntimeError("boom inside a worker")


PLUGIN = Plugin(name="boom", order=90, formats=(Format("boom", explode, "model.boom", "boom", "fails"),))
'''


@pytest.fixture
def boom_plugin(tmp_path, monkeypatch):
    """A third-party plugin installed on sys.path (found through its entry point, by workers too)."""
    site = tmp_path / "site"
    (site / "boom_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "boom_plugin.py").write_text(TOY_PLUGIN)
    (site / "boom_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: boom-plugin\nVersion: 1.0\n")
    (site / "boom_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[bsconv_export.formats]\nboom = boom_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    import importlib
    importlib.invalidate_caches()
    reload_plugins()
    yield
    reload_plugins()


@pytest.mark.slow
def test_a_stage_failing_in_a_worker_fails_only_its_record(tmp_path, shipped, boom_plugin):
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("pt2", "onnx", "boom")), check=CheckOptions(),
                      jobs=2, cache=False)
    by = {x.format: x for x in r.records}
    assert by["boom"].status is Status.FAILED and "boom inside a worker" in by["boom"].error
    assert by["onnx"].ok and by["onnx-simplified"].ok and by["pt2"].ok
    assert r.manifest.verdict == "failed"
    assert [x.format for x in r.records] == ["pt2", "onnx", "onnx-simplified", "boom"]


def _kill_workers_when(stage: str, seen: list[str]):
    """A progress callback that SIGKILLs every stage worker once ``stage`` has started."""
    def progress(name, record):
        if record is None and name == stage:
            def kill():
                time.sleep(1.0)
                for pid in _children():
                    os.kill(pid, signal.SIGKILL)
            threading.Thread(target=kill, daemon=True).start()
        if record is not None:
            seen.append(name)
    return progress


def _children() -> list[int]:
    """This process's stage workers (spawned: their command line runs multiprocessing's spawn_main)."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split()
    workers = []
    for pid in map(int, out):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:
            pass
    return workers


@pytest.mark.slow
def test_a_killed_worker_is_a_failed_record_not_a_hang(tmp_path, shipped):
    seen: list[str] = []
    t0 = time.monotonic()
    r = export_bundle(shipped, tmp_path / "k", ExportOptions(formats=("pt2", "pte", "onnx")), check=CheckOptions(),
                      jobs=2, cache=False, progress=_kill_workers_when("pte", seen))
    assert time.monotonic() - t0 < 300
    killed = [x for x in r.records if x.status is Status.FAILED]
    assert killed and all("killed by SIGKILL" in x.error for x in killed)
    assert r.manifest.verdict == "failed" and not r.ok
    assert _children() == []      # no worker left behind


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_its_job_is_a_failed_record(tmp_path, shared_bundle):
    """The pool on its own: a job whose worker is killed comes back failed; the next job runs on a new worker."""
    from bsconv_export.exporter.formats import complete_options
    from bsconv_export.exporter.bundle.manifest_io import read_manifest
    from bsconv_export.exporter.kit.prepare import example_input
    from bsconv_export.exporter.export.workers import StageJob, StagePool
    bundle = shared_bundle("every-format")
    spec = read_manifest(bundle).model.input_spec
    job = StageJob(fmt="onnx", options=complete_options(ExportOptions(formats=("onnx",))), arch="a", spec=spec,
                   example=example_input(spec.channels, spec.size, 1), workdir=str(tmp_path),
                   program_file=str(bundle / "model.pt2"), checkpoint_sha256="", params=0, macs=0, threads=1)
    pool = StagePool([()], threads=1)
    try:
        pool.submit(job)
        os.kill(pool._workers[0].process.pid, signal.SIGKILL)
        ((sent, result),) = pool.wait(timeout=60)
        assert sent is job and result.record.status is Status.FAILED and "killed by SIGKILL" in result.record.error
        assert pool.free
        pool.submit(job)
        ((_, result),) = pool.wait(timeout=300)
        assert result.record.ok and (tmp_path / "model.onnx").is_file() and result.peak_mib > 0
    finally:
        pool.close()


def test_jobs_below_one_is_refused(tmp_path, shipped):
    from bsconv_export.kernel.errors import UserInputError
    with pytest.raises(UserInputError, match="--jobs 0"):
        export(shipped, tmp_path / "z", jobs=0)


def test_workers_times_threads_never_exceed_the_cores(monkeypatch):
    from bsconv_export.kernel import machine
    from bsconv_export.exporter.export import schedule as pipeline
    monkeypatch.delenv("BSCONV_EXPORT_JOBS", raising=False)
    for cores in (1, 2, 3, 8):
        monkeypatch.setattr(machine, "usable_cores", lambda c=cores: c)
        for jobs in (None, 1, 2, 4, 16):
            for stages in (1, 3, 6):
                workers, threads = pipeline.plan_workers(jobs, stages)
                assert 1 <= workers <= min(cores, stages) and workers * threads <= cores
                assert workers <= (jobs or cores)


# --- the stage cache ---------------------------------------------------------------------------

CACHED = ("pt2", "onnx", "coreml")


def test_an_unchanged_export_reuses_every_stage_and_its_check(tmp_path, shipped):
    first = export(shipped, tmp_path / "a", CACHED)
    assert first.ok and not any(r.reused for r in first.records)
    again = export(shipped, tmp_path / "b", CACHED)
    assert again.ok
    assert all(r.reused and len(r.reused["key"]) == 64 and r.reused["first_verified_at"] for r in again.records)
    assert all(c.reused for c in again.manifest.check.records)
    assert again.manifest.check.reference_error == first.manifest.check.reference_error
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert [r.sha256 for r in again.records] == [r.sha256 for r in first.records]
    # the reused bundle is a bundle like any other: a fresh check passes it
    from bsconv_export.exporter.check.run import recheck_bundle
    report, _ = recheck_bundle(tmp_path / "b")
    assert report.passed and not any(c.reused for c in report.records)


@pytest.mark.slow
def test_no_cache_neither_reads_nor_fills_the_cache(tmp_path, shipped):
    root = Path(os.environ["BSCONV_EXPORT_STAGE_CACHE"])
    export(shipped, tmp_path / "a", ("pt2", "onnx"), cache=False)
    assert StageCache(root).entries() == []
    export(shipped, tmp_path / "b", ("pt2", "onnx"))
    n = len(StageCache(root).entries())
    r = export(shipped, tmp_path / "c", ("pt2", "onnx"), cache=False)
    assert not any(x.reused for x in r.records) and len(StageCache(root).entries()) == n


def test_a_changed_option_misses_only_the_stages_that_read_it(tmp_path, shipped):
    export(shipped, tmp_path / "a", ("pt2", "onnx"))
    r = export(shipped, tmp_path / "b", ("pt2", "onnx"), opset=19)
    by = {x.format: x for x in r.records}
    assert by["pt2"].reused and not by["onnx"].reused and by["onnx"].opset == 19
    assert not by["onnx-simplified"].reused   # it reads the new ONNX file


@pytest.mark.slow
def test_a_changed_checkpoint_byte_misses_everything(tmp_path, shipped):
    export(shipped, tmp_path / "a", ("pt2", "onnx"))
    ckpt = tmp_path / "changed.pt"
    state = {k: v.clone() for k, v in shipped.model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 10)
    state[name].view(-1)[0] += 1e-3
    torch.save(state, ckpt)
    changed = load_checkpoint(ckpt, arch=shipped.arch)
    r = export(changed, tmp_path / "b", ("pt2", "onnx"))
    assert r.ok and not any(x.reused for x in r.records)


@pytest.mark.slow
def test_a_changed_package_version_misses(tmp_path, shipped, monkeypatch):
    export(shipped, tmp_path / "a", ("pt2", "onnx"))
    from bsconv_export.exporter import formats
    real = formats.tool_versions

    def bumped(names=None):
        v = real(names)
        return {**v, "onnxscript": v["onnxscript"] + ".post1"} if "onnxscript" in v and names is not None else v
    monkeypatch.setattr(formats, "tool_versions", bumped)
    r = export(shipped, tmp_path / "b", ("pt2", "onnx"))
    by = {x.format: x for x in r.records}
    assert by["pt2"].reused and not by["onnx"].reused


def test_a_corrupted_cache_entry_is_discarded_and_the_stage_runs(tmp_path, shipped):
    root = Path(os.environ["BSCONV_EXPORT_STAGE_CACHE"])
    first = export(shipped, tmp_path / "a", ("pt2", "onnx"))
    key = next(r for r in first.records if r.format == "onnx").sha256
    entry = next(e for e in root.iterdir() if (e / "files" / "model.onnx").is_file()
                 and json.loads((e / "entry.json").read_text())["record"]["sha256"] == key)
    data = bytearray((entry / "files" / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / "files" / "model.onnx").write_bytes(bytes(data))
    r = export(shipped, tmp_path / "b", ("pt2", "onnx"))
    by = {x.format: x for x in r.records}
    assert r.ok and by["pt2"].reused and not by["onnx"].reused and by["onnx"].sha256 == key
    assert files(tmp_path / "b")["model.onnx"] == (tmp_path / "a" / "model.onnx").read_bytes()
    # an entry.json that is not JSON is discarded too
    for e in root.iterdir():
        if (e / "entry.json").is_file():
            (e / "entry.json").write_text("{not json")
    r = export(shipped, tmp_path / "c", ("pt2", "onnx"))
    assert r.ok and not any(x.reused for x in r.records)


@pytest.mark.slow
def test_the_cache_keeps_to_its_size_least_recently_used_first(tmp_path, shipped, monkeypatch):
    root = Path(os.environ["BSCONV_EXPORT_STAGE_CACHE"])
    cache = StageCache(root)

    def by_format() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for _, _, key in cache.entries():
            fmt = json.loads((root / key / "entry.json").read_text())["record"]["format"]
            out.setdefault(fmt, set()).add(key)
        return out

    export(shipped, tmp_path / "a", ("pt2", "onnx"))
    first = by_format()
    assert set(first) == {"pt2", "onnx", "onnx-simplified"}
    limit = sum(size for _, size, _ in cache.entries())
    monkeypatch.setenv("BSCONV_EXPORT_STAGE_CACHE_BYTES", str(limit))
    second = export(shipped, tmp_path / "b", ("pt2", "onnx"), opset=19)   # pt2 reused (touched), ONNX made anew
    assert next(r for r in second.records if r.format == "pt2").reused
    now = by_format()
    assert now["pt2"] == first["pt2"]                               # used by the latest export: kept
    assert not (now["onnx"] & first["onnx"]) and not (now["onnx-simplified"] & first["onnx-simplified"])
    assert len(now["onnx"]) == len(now["onnx-simplified"]) == 1     # the opset-19 files, just stored


@pytest.mark.slow
def test_two_concurrent_exports_share_the_cache(tmp_path):
    env = {**os.environ, "BSCONV_EXPORT_JOBS": "1"}
    cli = str(Path(sys.executable).with_name("bsconv-export"))
    cmds = [[cli, "export", "--out", str(tmp_path / n), "--formats", "pt2,onnx", "--json"] for n in ("x", "y")]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    third = subprocess.run([cli, "export", "--out", str(tmp_path / "z"), "--formats", "pt2,onnx", "--json"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0
    manifest = json.loads(third.stdout)
    assert all(a["reused"] for a in manifest["artifacts"])
    assert files(tmp_path / "z") == files(tmp_path / "x")
    root = Path(os.environ["BSCONV_EXPORT_STAGE_CACHE"])
    assert not [p for p in root.iterdir() if p.name.startswith(".") and p.name != ".bsconv-export-folder"]   # nothing half-written left


def test_the_cache_command_shows_and_clears_the_cache(tmp_path, shipped):
    from typer.testing import CliRunner
    from bsconv_export.cli import app
    export(shipped, tmp_path / "a", ("pt2", "onnx"))
    r = CliRunner().invoke(app, ["cache", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["folder"] == os.environ["BSCONV_EXPORT_STAGE_CACHE"] and summary["entries"] == 3
    assert {row["format"] for row in summary["by_format"]} == {"pt2", "onnx", "onnx-simplified"}
    r = CliRunner().invoke(app, ["cache", "--clear", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["removed"] == 3 and json.loads(r.stdout)["entries"] == 0
    again = export(shipped, tmp_path / "b", ("pt2", "onnx"))
    assert again.ok and not any(x.reused for x in again.records)
