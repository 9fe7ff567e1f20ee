"""Trust, third pass (issue 38): each finding of the third hostile-input round, through the real CLI.

Outputs a user can place (``sweep.json``, ``--results``, a ``--zoo`` plan, ``bench --out``, ``report
--out``) replace only a file the tool sealed; ``--force`` replaces only names an export writes; no
wait is unbounded; no hostile file gives a traceback.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.bundle.on_disk import entry_digest

from test_hostile import bundle, snapshot  # noqa: F401 - bundle is a fixture

runner = CliRunner()
CLI = os.path.join(os.path.dirname(sys.executable), "bsconv-export")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(r, *needles):
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in r.output, r.output


# --- High 1: sweep, bench --out, report --out never replace a user's file ------------------------

def test_a_sweep_never_replaces_a_users_results_or_plan(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text("[[job]]\nout = 'a'\nformats = ['onnx']\n")
    (tmp_path / "sweep.json").write_text('{"my": "results"}')
    (tmp_path / "mine.json").write_text("mine")
    before = snapshot([tmp_path])
    refused(invoke("sweep", plan), "sweep.json", "not written by bsconv-export")
    refused(invoke("sweep", plan, "--results", tmp_path / "mine.json"), "mine.json")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "sweep.toml").write_text("# my hand-written plan\n[[job]]\nout = 'x'\n")
    before = snapshot([tmp_path])
    refused(invoke("sweep", "--zoo", "mobilenetv1*", "--out", zoo, "--scheduler", "tcp://127.0.0.1:9"),
            "sweep.toml", f"bsconv-export sweep {zoo / 'sweep.toml'}")
    assert snapshot([tmp_path]) == before


def test_a_sealed_result_is_replaced_and_an_edited_one_is_not(tmp_path):
    from bsconv_export.kernel.sealed import seal_json, seal_text, write_sealed
    from bsconv_export.kernel.errors import UserInputError
    dest = tmp_path / "sweep.json"
    write_sealed(dest, seal_json({"jobs": [1]}), "fix")
    write_sealed(dest, seal_json({"jobs": [2]}), "fix")          # ours, unchanged: replaced
    assert json.loads(dest.read_text())["jobs"] == [2]
    d = json.loads(dest.read_text())
    d["jobs"] = [3]                                               # edited by the user: theirs now
    dest.write_text(json.dumps(d))
    with pytest.raises(UserInputError, match="not written by bsconv-export"):
        write_sealed(dest, seal_json({"jobs": [4]}), "fix")
    plan = tmp_path / "sweep.toml"
    write_sealed(plan, seal_text("[[job]]\nout = 'a'\n"), "fix")
    plan.write_text(plan.read_text().replace("'a'", "'b'"))
    with pytest.raises(UserInputError):
        write_sealed(plan, seal_text("x = 1\n"), "fix")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "sweep.json")
    with pytest.raises(UserInputError):
        write_sealed(link, seal_json({}), "fix")


def test_bench_and_report_out_never_replace_a_users_file(tmp_path, bundle):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"my": 1}')
    (mine / "r.md").write_text("# my notes")
    (mine / "s_latency.png").write_bytes(b"\x89PNG my plot")
    (mine / "s.md").write_text("fresh")
    before = snapshot([mine])
    refused(invoke("bench", bundle, "--out", mine / "results.json", "--iters", "5", "--warmup", "1"), "results.json")
    refused(invoke("report", bundle, "--out", mine / "r.md"), "r.md")
    assert snapshot([mine]) == before
    # a report of ours elsewhere is replaced by the next one (its seal holds)
    r = invoke("report", bundle, "--out", tmp_path / "ok.md")
    assert r.exit_code == 0, r.output
    r = invoke("report", bundle, "--out", tmp_path / "ok.md")
    assert r.exit_code == 0, r.output
    assert snapshot([mine]) == before


# --- High 2: --force and a planted manifest with true hashes --------------------------------------

def test_force_never_deletes_files_a_planted_manifest_lists_with_their_true_hashes(tmp_path, bundle):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.txt").write_text("my thesis")
    (user / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    planted = json.loads((bundle / "manifest.json").read_text())
    planted["artifacts"] = []
    planted["files"] = {n: entry_digest(user / n) for n in ("thesis.txt", "photo.jpg")}
    (user / "manifest.json").write_text(json.dumps(planted))
    before = snapshot([user])
    refused(invoke("export", "--out", user, "--force", "--formats", "pt2"), "no export writes", "thesis.txt")
    assert snapshot([user]) == before


# --- Low: one line, not a silent default ----------------------------------------------------------

def test_read_only_or_odd_cache_settings_are_said(monkeypatch, tmp_path):
    monkeypatch.setenv("BSCONV_EXPORT_STAGE_CACHE_BYTES", "abc")
    refused(invoke("cache"), "BSCONV_EXPORT_STAGE_CACHE_BYTES")


# --- Medium 3/4/5: bounded waits and reads, no traceback ------------------------------------------

class _Peer:
    """A TCP listener on 127.0.0.1 that accepts and then stays silent, or sends ``reply`` and waits."""

    def __init__(self, reply: bytes | None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.reply, self.conns = reply, []
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                if self.reply:
                    conn.sendall(self.reply)
        except OSError:
            pass

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("reply, needle", [
    (None, "did not send its handshake within 2 s"),
    (b"\xff" * 64, "which is no Dask handshake"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"garbage!" * 2, "no Dask handshake"),
])
def test_a_silent_or_garbling_scheduler_is_one_line_in_bounded_time(tmp_path, monkeypatch, reply, needle):
    from bsconv_export.exporter.sweep import dask_peer
    monkeypatch.setattr(dask_peer, "PROBE_SECONDS", 2.0)
    plan = tmp_path / "plan.toml"
    plan.write_text("[[job]]\nout = 'a'\nformats = ['onnx']\n")
    peer = _Peer(reply)
    try:
        t0 = time.monotonic()
        r = invoke("sweep", plan, "--scheduler", peer.address)
        assert time.monotonic() - t0 < 20
    finally:
        peer.close()
    refused(r, needle, peer.address)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.toml"]


def test_a_deeply_nested_plan_is_one_line(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n[[job]]\nout = 'a'\n")
    refused(invoke("sweep", plan), "nests its values too deeply")


_SIGINT_AS_FROM_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                              "os.execv(sys.argv[1], sys.argv[1:])")


@pytest.mark.slow
def test_ctrl_c_ends_a_sweep_within_seconds_leaving_nothing_behind(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text("[defaults]\nformats = ['onnx', 'coreml', 'pte']\n\n[[job]]\nout = 'a'\n\n[[job]]\nout = 'b'\n"
                    "opset = 18\n")
    # as from a terminal: SIGINT at its default (a shell starts a background job with it ignored, and
    # Python then keeps ignoring it: CI launched that way saw a sweep never end)
    p = subprocess.Popen([sys.executable, "-c", _SIGINT_AS_FROM_A_TERMINAL, CLI, "sweep", str(plan)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".*.building-*")):
        time.sleep(0.5)     # until a job is half-way through its export
    assert list(tmp_path.glob(".*.building-*")), "no job started within 120 s"
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:      # say what was still running, and where each process waited
        tree = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,wchan:24,args", "-g", str(p.pid)],
                              capture_output=True, text=True).stdout
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"the sweep did not end within 30 s of Ctrl-C (exit code {p.poll()}); its processes:\n{tree}")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 30 and p.returncode != 0
    assert "Traceback" not in err.decode(), err.decode()[-2000:]
    alive = subprocess.run(["ps", "-o", "stat=", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert not [s for s in alive if not s.startswith("Z")], alive     # no process of the sweep left running
    assert sorted(x.name for x in tmp_path.iterdir()) in (["plan.toml"], ["a", "plan.toml"], ["b", "plan.toml"],
                                                          ["a", "b", "plan.toml"])



@pytest.mark.slow
def test_an_interrupted_sweep_ends_in_seconds_even_when_the_polite_close_hangs(tmp_path):
    """A Ctrl-C'd sweep must not wait on a close. The interrupted end kills the workers and removes the
    killed jobs' build folders first; the client's and cluster's close get 10 s, and cannot hold the
    exit (here the cluster's close hangs, as it might on a loaded machine)."""
    import psutil
    from distributed import LocalCluster
    from bsconv_export.exporter.bundle.claim import OutClaim
    from bsconv_export.exporter.sweep.plan import Job
    from bsconv_export.exporter.sweep.run import _end_now
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=50)
    assert all(n.process.pid for n in cluster.workers.values())
    claim = OutClaim(tmp_path / "a", force=False).__enter__()
    building = claim.building_dir()
    os.close(claim.fd)                  # the killed job's process held the lock; the dead hold nothing
    claim.fd = None
    close = cluster.close
    cluster.close = lambda **kw: time.sleep(60)
    job = Job(index=0, out=str(tmp_path / "a"), model={}, options={}, check=True)
    try:
        t0 = time.monotonic()
        _end_now(cluster, None, [job])
        assert time.monotonic() - t0 < 25
        assert not building.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
        time.sleep(2)                                    # a nanny's restart would have begun by now
        left = [c for c in psutil.Process().children(recursive=True)
                if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                and not any("resource_tracker" in part for part in c.cmdline())]
        assert not left, [(c.pid, c.cmdline()[:3]) for c in left]
    finally:
        cluster.close = close
        try:
            close(timeout=5)
        except Exception:  # noqa: BLE001 - its workers are gone
            pass


_DEADLINE_SCRIPT = """
import signal, sys, time
from pathlib import Path
from bsconv_export.exporter.sweep.deadline import deadline_after_interrupt
signal.signal(signal.SIGINT, signal.default_int_handler)    # as from a terminal, even if started ignoring it
marker, held = Path(sys.argv[1]), sys.argv[2] == "held"
try:
    with deadline_after_interrupt(lambda: marker.write_text("cleaned"), seconds=1.0):
        if held:      # a main thread that never unwinds: the signal's Python handler does nothing
            signal.signal(signal.SIGINT, lambda *_: None)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
except KeyboardInterrupt:
    time.sleep(2.5)          # unwound: the watcher, past its deadline, must not end the process now
    print("unwound", flush=True)
"""


@pytest.mark.parametrize("held", [True, False])
def test_an_interrupt_ends_the_sweep_by_its_deadline_however_the_main_thread_is_held(tmp_path, held):
    """A main thread that does not unwind cannot hold the exit. The signal also wakes a watcher at the C
    level: a main thread that has not unwound by the deadline is ended, after the cleanup; one that
    unwinds is left to finish on its own."""
    marker = tmp_path / "marker"
    p = subprocess.Popen([sys.executable, "-c", _DEADLINE_SCRIPT, str(marker), "held" if held else "free"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    if held:
        assert p.returncode == 130 and marker.read_text() == "cleaned", err
        assert time.monotonic() - t0 < 10
    else:
        assert p.returncode == 0 and "unwound" in out and not marker.exists(), err

# --- Medium 7: a kit runs only as it was made ----------------------------------------------------

def test_a_kit_is_refused_when_a_file_is_added_changed_or_removed(tmp_path):
    from bsconv_export.kernel import kit_files
    from bsconv_export.kernel.errors import UserInputError
    from bsconv_export.kernel.kit_files import record_files, verify_files
    kit = tmp_path / "kit"
    (kit / "lib").mkdir(parents=True)
    (kit / "lib" / "a.so").write_bytes(b"y" * 100)
    (kit / "bin").mkdir()
    (kit / "bin" / "python").write_text("x")
    (kit / "bin" / "python3").symlink_to("python")
    record_files(kit)
    verify_files(kit, "the kit", "make it again")
    os.utime(kit / "lib" / "a.so")                      # touched, same bytes: still the kit
    kit_files._VERIFIED.clear()                          # (a folder is walked once per process)
    verify_files(kit, "the kit", "make it again")
    for change, needle in [(lambda: (kit / "lib" / "evil.pth").write_text("import os"), "evil.pth"),
                           (lambda: (kit / "lib" / "a.so").write_bytes(b"z" * 100), "changed"),
                           (lambda: (kit / "bin" / "python").unlink(), "lacks")]:
        change()
        kit_files._VERIFIED.clear()
        with pytest.raises(UserInputError, match=needle):
            verify_files(kit, "the kit", "make it again")
        record_files(kit)


def test_an_unrecorded_or_tampered_kit_never_runs(tmp_path, monkeypatch):
    from bsconv_export.exporter.arm64 import kit as arm64_kit
    from bsconv_export.exporter.formats.litert import converter
    from bsconv_export.kernel.errors import UserInputError
    monkeypatch.setenv("BSCONV_EXPORT_CACHE", str(tmp_path))
    env = converter.env_dir()
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("#!/bin/sh\necho ran > " + str(tmp_path / "ran") + "\n")
    (env / "bin" / "python").chmod(0o755)
    (env / converter.READY).write_text("made")
    with pytest.raises(converter.ConversionFailed, match="no readable record"):
        converter.convert(tmp_path / "model.pt2", tmp_path / "out.tflite", (1, 3, 8, 8))
    assert not (tmp_path / "ran").exists()
    root = arm64_kit.kit_dir()
    root.mkdir(parents=True)
    (root / "qemu-aarch64").write_text("#!/bin/sh\n")
    (root / arm64_kit.READY).write_text("made")
    with pytest.raises(UserInputError, match="ARM64 kit"):
        arm64_kit.find_kit()
    r = invoke("check", tmp_path, "--on", "arm64")
    assert r.exit_code == 2 and "ARM64 kit" in r.output and "Traceback" not in r.output


def test_a_path_that_is_not_utf8_is_one_line_before_any_work(tmp_path):
    r = subprocess.run([CLI.encode(), b"export", b"--out", b"b\xff", b"--formats", b"pt2"], cwd=tmp_path,
                       capture_output=True, timeout=120)
    assert r.returncode == 2 and b"not valid UTF-8" in r.stderr and b"Traceback" not in r.stderr, r.stderr[-800:]
    assert list(tmp_path.iterdir()) == []


# --- issue 36: a folder of images is untrusted input ------------------------------------------------

def _hostile_folders(root):
    import numpy as np
    from PIL import Image
    good = np.full((8, 8), 128, np.uint8)
    made = {}
    root.mkdir()
    bomb = root / "bomb"
    bomb.mkdir()
    Image.fromarray(good, "L").save(bomb / "ok.png")
    png = (bomb / "ok.png").read_bytes()   # the same PNG, its header declaring 100000 x 100000 pixels
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (bomb / "bomb.png").write_bytes(png[:8] + chunk + png[8 + 25:])
    made["bomb"] = (bomb, "declares more than 8192x8192 pixels")
    link = root / "link"
    link.mkdir()
    Image.fromarray(good, "L").save(link / "ok.png")
    secret = root / "secret.png"
    Image.fromarray(good, "L").save(secret)
    (link / "out.png").symlink_to(secret)
    made["link"] = (link, "is a link out of the folder")
    many = root / "many"
    many.mkdir()
    for i in range(100_000):
        os.close(os.open(many / f"{i:06d}.png", os.O_CREAT | os.O_WRONLY, 0o644))
    made["many"] = (many, "holds more than 10,000 images")
    text = root / "text"
    text.mkdir()
    (text / "notes.png").write_text("this is not a picture\n")
    made["text"] = (text, "is not a PNG image, whatever its name says")
    fifo = root / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "pipe.png")
    made["fifo"] = (fifo, "is not a regular file")
    return made


def test_a_hostile_image_folder_is_one_line_and_exit_2_everywhere(tmp_path, shared_bundle):
    """A bomb, a link out, 10⁵ files, a text file named .png, a FIFO: one line naming it, exit 2, for
    check --data, evaluate --data and export --calibration (which writes nothing)."""
    bundle_dir = tmp_path / "b"
    shutil.copytree(shared_bundle("every-format"), bundle_dir)
    before = (bundle_dir / "manifest.json").read_bytes()
    for name, (folder, says) in _hostile_folders(tmp_path / "h").items():
        out = tmp_path / f"out-{name}"
        for args in (["check", bundle_dir, "--data", folder], ["evaluate", "--data", folder],
                     ["export", "--out", out, "--formats", "int8", "--calibration", folder]):
            r = invoke(*args)
            refused(r, says)
            assert r.output.count("error:") == 1, (name, args, r.output)
        assert not out.exists(), name
        assert (bundle_dir / "manifest.json").read_bytes() == before
