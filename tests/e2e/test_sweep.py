"""``bsconv-export sweep``: a plan of export + check jobs on Dask (a local cluster, or a scheduler
and workers started here as separate processes on 127.0.0.1)."""
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.models.checkpoint import save_checkpoint

TESTS = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
runner = CliRunner()


def one_line_exit_2(r, needle):
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize("plan, needle", [
    ("[[job]]\nmodel = 'x'\n", "'out' (the bundle folder) is missing"),
    ("[[job]]\nout = 'a'\nformat = ['onnx']\n", "unknown key 'format'"),
    ("[[job]]\nout = 'a'\n[[job]]\nout = 'a'\n", "is job 1's too"),
    ("[[job]\n", "is not valid TOML"),
    ("[defaults]\nout = 'a'\n", "no [[job]] tables"),
    ("[[job]]\nout = 'a'\nformats = ['onnx', 'tensorrt']\n", "unknown format tensorrt"),
    ("[[job]]\nout = 'a'\nint8_plan = 3\n", "'int8_plan' must be text"),
])
def test_a_bad_plan_is_one_line_before_any_work(tmp_path, plan, needle):
    (tmp_path / "plan.toml").write_text(plan)
    one_line_exit_2(runner.invoke(app, ["sweep", str(tmp_path / "plan.toml")]), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.toml"]


@pytest.fixture
def plan(tmp_path, shipped):
    """Three jobs of the shipped model (onnx only, to keep it quick); the third's weights are NaN."""
    bad = copy.deepcopy(shipped.model)
    with torch.no_grad():
        next(bad.parameters()).fill_(float("nan"))
    save_checkpoint(bad, tmp_path / "nan.pt")
    text = ("[defaults]\nformats = ['onnx']\n\n"
            "[[job]]\nout = 'a'\n\n"
            "[[job]]\nout = 'b'\nopset = 18\n\n"
            "[[job]]\nout = 'nan'\ncheckpoint = 'nan.pt'\n")
    (tmp_path / "plan.toml").write_text(text)
    return tmp_path / "plan.toml"


def _rows(path):
    return {Path(r["out"]).name: r for r in json.loads(Path(path).read_text())["jobs"]}


@pytest.mark.slow
def test_a_local_sweep_runs_every_job_and_a_failure_stays_its_own_row(plan):
    r = runner.invoke(app, ["sweep", str(plan), "--workers", "2"])
    assert r.exit_code == 1, r.output
    rows = _rows(plan.parent / "sweep.json")
    assert rows["a"]["verdict"] == "passed" and rows["b"]["verdict"] == "passed"
    assert rows["nan"]["verdict"] == "failed"
    assert rows["a"]["artifacts"] == {"onnx": "ok", "onnx-simplified": "ok"}
    assert all(row["worker"].startswith("tcp://127.0.0.1:") for row in rows.values())
    assert (plan.parent / "a" / "manifest.json").is_file() and (plan.parent / "b" / "model.onnx").is_file()
    # --resume: the two that passed are skipped, the failed one runs again (and fails again)
    r = runner.invoke(app, ["sweep", str(plan), "--workers", "1", "--resume", "--json"])
    rows = {Path(x["out"]).name: x for x in json.loads(r.stdout)["jobs"]}
    assert r.exit_code == 1 and rows["a"]["verdict"] == "skipped" and rows["b"]["verdict"] == "skipped"
    assert rows["nan"]["verdict"] == "failed"
    # a changed file is not "the same inputs": the job runs again (and may not replace without force)
    (plan.parent / "a" / "model.onnx").write_bytes(b"changed")
    r = runner.invoke(app, ["sweep", str(plan), "--workers", "1", "--resume", "--json"])
    rows = {Path(x["out"]).name: x for x in json.loads(r.stdout)["jobs"]}
    assert rows["a"]["verdict"] == "failed" and "already exists" in rows["a"]["error"]
    assert rows["b"]["verdict"] == "skipped"


@pytest.mark.slow
def test_a_job_whose_worker_dies_is_retried_then_a_failed_row_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.chdir(TESTS)   # the entry point's module is importable from the current folder
    (tmp_path / "plan.toml").write_text(
        "[defaults]\nformats = ['onnx']\ninput_size = 32\n\n"
        "[[job]]\nout = 'dies'\nentry_point = 'custom_models:dies'\n\n"
        "[[job]]\nout = 'tiny'\nentry_point = 'custom_models:tiny'\n")
    t0 = time.monotonic()
    r = runner.invoke(app, ["sweep", str(tmp_path / "plan.toml"), "--workers", "2", "--json"])
    rows = {Path(x["out"]).name: x for x in json.loads(r.stdout)["jobs"]}
    assert r.exit_code == 1 and time.monotonic() - t0 < 300
    assert rows["dies"]["verdict"] == "failed" and "died" in rows["dies"]["error"]
    assert rows["tiny"]["verdict"] == "passed", rows["tiny"]


@pytest.mark.slow
def test_a_sweep_on_a_scheduler_and_two_worker_processes(plan, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1",
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not info.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        for name in ("w1", "w2"):
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--host", "127.0.0.1", "--no-dashboard", "--name", name], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=120)
            workers = set(c.scheduler_info()["workers"])
        r = runner.invoke(app, ["sweep", str(plan), "--scheduler", address, "--json"])
        rows = {Path(x["out"]).name: x for x in json.loads(r.stdout)["jobs"]}
        assert r.exit_code == 1 and rows["a"]["verdict"] == "passed" and rows["nan"]["verdict"] == "failed"
        assert {row["worker"] for row in rows.values()} <= workers
        assert json.loads(r.stdout)["workers"] == 2
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line(plan):
    r = runner.invoke(app, ["sweep", str(plan), "--scheduler", "tcp://127.0.0.1:9"])
    assert r.exit_code == 2 and "the Dask scheduler at tcp://127.0.0.1:9 cannot be reached" in r.output, r.output


@pytest.mark.slow
def test_a_local_sweep_connects_to_the_loopback_only(tmp_path):
    """strace every connect()/sendto() of a local sweep (scheduler, nanny and worker processes)."""
    import re
    import shutil
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    (tmp_path / "plan.toml").write_text("[[job]]\nout = 'a'\nformats = ['onnx']\ncheck = false\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1"}
    trace = tmp_path / "trace"
    p = subprocess.run(["strace", "-f", "-e", "trace=connect,sendto", "-o", str(trace), str(BIN / "bsconv-export"),
                        "sweep", str(tmp_path / "plan.toml"), "--workers", "1"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    addresses = re.findall(r'(?:inet_addr|inet_pton)\((?:AF_INET6, )?"([^"]+)"', trace.read_text())
    assert addresses and all(a in ("127.0.0.1", "::1") for a in addresses), sorted(set(addresses))
