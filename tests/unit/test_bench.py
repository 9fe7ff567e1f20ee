import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.bench.bench import BenchOptions, run_bench
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.formats.onnx.runner import OnnxRunner, available_providers
from bsconv_export.exporter.kit.stats import (bootstrap_ci, paired_decision, summarize, unpaired_decision,
                                              windows_agree)
from bsconv_export.models.checkpoint import resolve_model

runner = CliRunner()
FAST = BenchOptions(warmup=2, duration=0.3, window=5)


# --- statistics on synthetic timings: known distributions give known decisions -----------

def test_summary_of_known_values():
    s = summarize(np.arange(1, 101) / 1e3, batch=4)
    assert s["n"] == 100 and s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["mean_ms"] == pytest.approx(50.5) and s["throughput_per_s"] == pytest.approx(4000 / 50.5)


def test_windows_agree():
    assert windows_agree([10, 10.2, 9.9])
    assert not windows_agree([10, 12, 10])
    assert not windows_agree([10, 10])


def test_bootstrap_interval_covers_the_median():
    x = np.random.default_rng(1).lognormal(0, 0.3, 400)
    low, high = bootstrap_ci(x)
    assert low < np.median(x) < high and high - low < 0.2


def _noisy(n, scale, seed, drift=True):
    rng = np.random.default_rng(seed)
    machine = 1 + (0.5 * np.sin(np.linspace(0, 6, n)) if drift else 0)   # slow drift of the machine speed
    spikes = np.where(rng.random(n) < 0.05, rng.uniform(1, 4, n), 1)     # occasional 1–4x stalls
    return 0.01 * scale * machine * spikes * rng.lognormal(0, 0.05, n)


def test_same_model_is_not_a_regression_even_on_a_noisy_drifting_machine():
    rng_pairs = [(_noisy(300, 1.0, s), _noisy(300, 1.0, s + 100)) for s in range(20)]
    assert not any(paired_decision(a, b, 0.05).regression for a, b in rng_pairs)


def test_twenty_percent_slower_is_caught_and_three_percent_is_tolerated():
    a = _noisy(300, 1.0, 1)
    assert paired_decision(a, _noisy(300, 1.2, 2), 0.05).regression
    d = paired_decision(a, _noisy(300, 1.03, 3), 0.05)
    assert not d.regression and 0.98 < d.ratio < 1.08
    assert "fails only when" in d.describe()


def test_unpaired_decision_for_stored_baselines():
    a = np.random.default_rng(0).lognormal(np.log(0.01), 0.05, 500)
    b = np.random.default_rng(1).lognormal(np.log(0.013), 0.05, 500)
    assert unpaired_decision(a, b, 0.05).regression
    assert not unpaired_decision(a, a * 1.01, 0.05).regression


def test_paired_decision_refuses_tiny_or_unequal_samples():
    with pytest.raises(ValueError):
        paired_decision(np.ones(3), np.ones(3))


# --- the benchmark itself --------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundles(tmp_path_factory, shipped):
    root = tmp_path_factory.mktemp("bench")
    export_bundle(shipped, root / "digits", ExportOptions(formats=("onnx", "ort")))
    export_bundle(resolve_model("mobilenetv2_w1d2_bsconvs_p1d6"), root / "big",
                  ExportOptions(formats=("onnx",), input_size=160))
    return root


def test_provider_discovery_and_the_skip_path(bundles):
    assert "CPUExecutionProvider" in available_providers()
    res = run_bench(bundles / "digits", BenchOptions(providers=("cpu", "cuda"), batches=(1, 4), warmup=2,
                                                     duration=0.3, window=5))
    rows = {(r["artifact"], r["provider"], r["batch"]): r for r in res["results"]}
    assert rows[("onnx-simplified", "cpu", 1)]["status"] == "ok"
    assert rows[("onnx-simplified", "cpu", 4)]["status"] == "ok"  # fixed batch re-dimensioned for ONNX
    assert rows[("ort", "cpu", 4)]["status"] == "skipped" and "--dynamic-batch" in rows[("ort", "cpu", 4)]["reason"]
    if "CUDAExecutionProvider" not in available_providers():
        cuda = rows[("onnx-simplified", "cuda", 1)]
        assert cuda["status"] == "skipped" and "CUDAExecutionProvider is not available" in cuda["reason"]
    ok = rows[("onnx-simplified", "cpu", 1)]
    assert set(ok["latency"]) >= {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_per_s"}
    assert ok["runtime_options"]["graph_optimization_level"] == "ORT_ENABLE_ALL" and ok["samples_ms"]
    assert res["schema"] == "bsconv-export-bench/1" and res["machine"]["logical_cores"] >= 1
    assert "isa" in res["machine"] and res["fingerprint"]["cpu"] == res["machine"]["cpu"]


def test_iters_threads_auto_and_vs_torch(bundles, shipped):
    res = run_bench(bundles / "digits", BenchOptions(iters=25, warmup=2, window=5, threads="auto", vs_torch=True),
                    torch_model=shipped.model)
    row = res["results"][0]
    assert row["status"] == "ok" and row["latency"]["n"] == 25 and isinstance(row["threads"], int)
    assert row["threads_tried_p50_ms"] and row["vs_torch"]["pairs"] == 25
    assert row["vs_torch"]["ratio_ci95"][0] <= row["vs_torch"]["ratio_median"] <= row["vs_torch"]["ratio_ci95"][1]


def test_with_batch_rewrites_only_when_needed(bundles, tmp_path):
    src = bundles / "digits" / "model.sim.onnx"
    assert OnnxRunner.rebatched(src, 1, tmp_path) == src
    assert OnnxRunner.rebatched(src, 3, tmp_path) != src


# --- CLI -----------------------------------------------------------------------------------------

def test_bench_cli_json_and_report(bundles, tmp_path):
    out = tmp_path / "r.json"
    r = runner.invoke(app, ["bench", str(bundles / "digits"), "--duration", "0.3", "--warmup", "2", "--json",
                            "--out", str(out), "--providers", "cpu,cuda"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"] and json.loads(out.read_text())["schema"] == "bsconv-export-bench/1"
    r = runner.invoke(app, ["bench", str(bundles / "digits"), "--duration", "0.3", "--warmup", "2"])
    assert r.exit_code == 0 and (bundles / "digits" / "bench.json").exists()
    for fmt in ("md", "html"):
        r = runner.invoke(app, ["report", str(bundles / "digits"), "--format", fmt])
        assert r.exit_code == 0, r.output
        text = (bundles / "digits" / f"report.{fmt}").read_text()
        assert "report_latency.png" in text and "onnx-simplified" in text
    png = (bundles / "digits" / "report_latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["bench", "nowhere.onnx"], "neither a bundle directory nor"),
    (["bench", ".", "--threads", "many"], "--threads must be"),
    (["bench", ".", "--batch", "0"], "outside 1..1024"),
    (["regress", "--baseline", "missing.json", "--candidate", "x.onnx"], "does not exist"),
    (["report", "."], "is not a bundle"),
])
def test_bench_cli_bad_input_exit_2(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_regress_cli_ab_same_passes_and_much_slower_fails(bundles):
    a = str(bundles / "digits")
    # one thread each: a pytest worker per core, so the test chooses its threads rather than inherit them
    r = runner.invoke(app, ["regress", "--baseline", a, "--candidate", a, "--duration", "1", "--threads", "1",
                            "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)["decision"]
    assert not d["regression"] and d["ci_low"] <= d["ratio"] <= d["ci_high"]
    r = runner.invoke(app, ["regress", "--baseline", a, "--candidate", str(bundles / "big"), "--duration", "1",
                            "--threads", "1"])
    assert r.exit_code == 1 and "REGRESSION" in r.stdout


def test_regress_against_a_stored_result(bundles, tmp_path):
    stored = tmp_path / "base.json"
    runner.invoke(app, ["bench", str(bundles / "digits"), "--duration", "0.5", "--out", str(stored)])
    r = runner.invoke(app, ["regress", "--baseline", str(stored), "--candidate", str(bundles / "big"),
                            "--duration", "1", "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["mode"] == "stored"
    data = json.loads(stored.read_text())
    data["fingerprint"]["cpu"] = "some other CPU"
    stored.write_text(json.dumps(data))
    r = runner.invoke(app, ["regress", "--baseline", str(stored), "--candidate", str(bundles / "digits"),
                            "--duration", "1"])
    assert "fingerprint differs" in r.stderr


def test_the_cli_times_a_bundle_against_eager_torch(bundles, tmp_path):
    """``bench --vs-torch`` rebuilds the original from the bundle's recorded source and pairs with it."""
    r = runner.invoke(app, ["bench", str(bundles / "digits"), "--vs-torch", "--iters", "5", "--out",
                            str(tmp_path / "r.json"), "--json"])
    assert r.exit_code == 0, r.output
    rows = [row for row in json.loads(r.stdout)["results"] if row["status"] == "ok"]
    assert rows and all(row["vs_torch"]["pairs"] == 5 for row in rows)
