"""Format plugins: found through entry points, each format one folder, a broken one contained.

The example third-party plugin (examples/format-plugin) is installed from outside the
repository with ``pip install --no-deps --target`` and run through the CLI in fresh
processes: listed, exported with its own option, checked (its labels too), benchmarked
and named in the reproduce command, with no file of the project changed.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter import formats
from bsconv_export.exporter.formats import discovery
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.kit.records import Status
from helpers import rehash

REPO = Path(__file__).resolve().parents[2]
BSCONV_EXPORT = Path(sys.executable).with_name("bsconv-export")


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """The example plugin installed into a folder of its own, from a copy outside the repository."""
    root = tmp_path_factory.mktemp("toy")
    src = root / "src"
    shutil.copytree(REPO / "examples" / "format-plugin", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = root / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return site


def cli(site, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1",
           "COLUMNS": "200"}
    return subprocess.run([str(BSCONV_EXPORT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_a_third_party_plugin_works_end_to_end_from_outside_the_repository(toy_site, tmp_path):
    before = _git_status()
    p = cli(toy_site, "formats", "--json")
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)
    toy = next(f for f in listed["formats"] if f["name"] == "toy")
    assert toy["plugin"] == "toy" and toy["verified_by"] == ["toy-onnxruntime"] and toy["options"] == ["--toy-note"]
    assert {"name": "toy", "module": "bsconv_toy_format"} in listed["plugins"] and not listed["plugin_errors"]
    assert "--toy-note" in cli(toy_site, "export", "--help").stdout

    out = tmp_path / "b"
    p = cli(toy_site, "export", "--formats", "toy", "--toy-note", "made by a plugin", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = json.loads(p.stdout)
    assert [a["format"] for a in manifest["artifacts"]] == ["onnx", "onnx-simplified", "toy"]
    assert manifest["export"]["options"]["toy_note"] == "made by a plugin"
    assert "onnxruntime" in manifest["tools"] and manifest["tools"]["bsconv-export-toy-format"] == "0.1.0"
    toy_checks = [c for c in manifest["check"]["results"] if c["artifact"] == "toy"]
    assert [(c["runner"], c["status"]) for c in toy_checks] == [("toy-onnxruntime", "ok")]
    assert "--formats toy" in manifest["command"] and "--toy-note 'made by a plugin'" in manifest["command"]
    with zipfile.ZipFile(out / "model.toy") as z:
        assert z.read("note.txt") == b"made by a plugin"

    p = cli(toy_site, "bench", str(out), "--iters", "5", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(p.stdout)["results"]
    assert ("toy", "toy-onnxruntime", "ok") in {(r["artifact"], r["runner"], r["status"]) for r in rows}

    # its labels are the check's business too: a .toy whose labels disagree with the manifest fails
    bad = tmp_path / "labels"
    shutil.copytree(out, bad)
    with zipfile.ZipFile(out / "model.toy") as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["labels.json"] = json.dumps([f"class {i}" for i in range(10)]).encode()
    with zipfile.ZipFile(bad / "model.toy", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    rehash(bad)
    p = cli(toy_site, "check", str(bad))
    assert p.returncode == 1 and re.search(r"labels differ from the manifest's at index 0", p.stdout + p.stderr)
    assert _git_status() == before    # no file of the project changed


def test_without_the_plugin_its_bundle_is_not_vouched_for(toy_site, tmp_path):
    """A bundle holding a format whose plugin is not installed: the file is unverified, never passed."""
    out = tmp_path / "b"
    p = cli(toy_site, "export", "--formats", "toy", "--out", str(out), "--no-check")
    assert p.returncode == 0, p.stderr[-2000:]
    p = cli(tmp_path / "empty-site", "check", str(out))
    assert p.returncode == 1 and "model.toy is no file this bsconv-export writes" in p.stdout + p.stderr


def test_a_broken_plugin_is_named_and_left_out(toy_site, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(toy_site, site)
    (site / "broken_plugin.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bsconv_export.formats]\nbroken = broken_plugin\n")
    p = cli(site, "formats", "--json")
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)
    assert any("broken_plugin" in e and "broken on purpose" in e for e in listed["plugin_errors"])
    assert {"toy", "onnx", "pte"} <= {f["name"] for f in listed["formats"]}
    p = cli(site, "formats")
    assert p.returncode == 0 and "not loaded:" in p.stderr and "broken on purpose" in p.stderr


@pytest.fixture
def plugin(monkeypatch):
    """Add plugins (``tests/toy_plugins.py:NAME``) to what the entry points name, in this process."""
    real = discovery._entry_points

    def install(*names):
        extra = [EntryPoint(n.lower(), f"toy_plugins:{n}", formats.ENTRY_POINT_GROUP) for n in names]
        monkeypatch.setattr(discovery, "_entry_points", lambda: real() + extra)
        formats.reload_plugins()

    yield install
    formats.reload_plugins()


def test_plugins_that_clash_or_expose_nothing_are_left_out_whole(plugin):
    plugin("CLASH", "NOT_A_PLUGIN")
    errors = formats.plugin_errors()
    assert any("clash" in e and "format onnx is registered twice" in e for e in errors)
    assert any("exposes no PLUGIN" in e for e in errors)
    assert formats.FORMATS["onnx"].filename == "model.onnx"


def test_a_third_party_plugin_never_displaces_a_built_in_nor_takes_a_commands_flag(plugin):
    plugin("EARLY_CLASH", "OUT_FLAG")
    errors = formats.plugin_errors()
    assert formats.FORMATS["onnx"].filename == "model.onnx" and "outflag" not in formats.FORMATS
    assert any("aaa-early" in e and "format onnx is registered twice" in e for e in errors), errors
    assert any("outflag" in e and "--out" in e for e in errors), errors
    assert list(formats.FORMATS)[0] == "pt2"    # stages still in the built-ins' order


@pytest.mark.slow
def test_a_plugin_declares_a_precision_with_its_own_gate(plugin, tmp_path, shipped):
    """A new precision is local to its plugin: the row names it, the plugin declares its gate and strictness,
    and the check, the content rule and the manifest's schema take it from there."""
    from bsconv_export.exporter.bundle.manifest_io import read_manifest
    from bsconv_export.exporter.check.run import CheckOptions
    from bsconv_export.exporter.export.run import export_bundle
    from bsconv_export.exporter.kit.options import ExportOptions
    plugin("PALETTE", "UNDECLARED")
    errors = formats.plugin_errors()
    assert any("undeclared" in e and "toy-lut-2bit" in e for e in errors), errors
    assert formats.tolerance_for("toy-lut-6bit").min_top1_agreement == 0.5
    assert formats.strictness()["toy-lut-6bit"] == 1 and formats.precision_rule("toy-lut-6bit").reduced
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("palette",)), check=CheckOptions())
    rec = next(c for c in r.manifest.check.records if c.artifact == "palette")
    assert r.ok and rec.status.value == "ok" and rec.precision == "toy-lut-6bit", rec
    assert "top-1 agreement >= 50%" in rec.tolerance
    assert read_manifest(tmp_path / "b").passed     # the schema takes the plugin's precision


def test_a_plugin_row_or_record_that_leaves_the_bundle_is_refused(plugin, tmp_path, shipped):
    from bsconv_export.exporter.export.run import export_bundle
    from bsconv_export.exporter.check.run import CheckOptions
    from bsconv_export.exporter.kit.options import ExportOptions
    plugin("BAD_NAME", "ESCAPE")
    assert any("badname" in e and "not a plain name" in e for e in formats.plugin_errors())
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("pt2", "escape")), check=CheckOptions())
    escape = next(a for a in r.records if a.format == "escape")
    assert not escape.ok and "names file '../escaped.txt'" in escape.error and not r.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] or not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("body, needle", [("import sys\nsys.exit(3)\n", "sys.exit(3)"),
                                          ("import time\ntime.sleep(600)\n", "did not finish within 1 s")])
def test_a_plugin_that_exits_or_hangs_at_import_is_left_out_in_bounded_time(tmp_path, monkeypatch, body, needle):
    import time
    (tmp_path / "bad_import_plugin.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(discovery, "PLUGIN_IMPORT_SECONDS", 1.0)
    monkeypatch.setattr(discovery, "_entry_points", lambda real=discovery._entry_points: real() + [
        EntryPoint("bad", "bad_import_plugin", formats.ENTRY_POINT_GROUP)])
    formats.reload_plugins()
    try:
        t0 = time.monotonic()
        errors = formats.plugin_errors()
        assert time.monotonic() - t0 < 30
        assert any("bad_import_plugin" in e and needle in e for e in errors), errors
        assert "onnx" in formats.FORMATS
    finally:
        formats.reload_plugins()


def test_a_plugins_own_version_is_recorded_and_keys_its_stages(monkeypatch):
    """A new release of a plugin is never served stale from the stage cache: its distribution's version is
    one of the tools its stages are keyed by and its bundles record."""
    reg = formats.registry()
    toy = formats.Plugin(name="versioned", formats=(formats.Format("versioned", None, "model.versioned", "x", "x"),),
                         distribution="pip")
    monkeypatch.setattr(reg, "plugins", [*reg.plugins, toy])
    monkeypatch.setitem(reg.owner, "versioned", "versioned")
    assert "pip" in formats.tool_names(["versioned"])
    assert formats.tool_versions(["versioned"])["pip"] != "not installed"


@pytest.mark.slow
def test_a_runner_that_breaks_the_output_contract_is_a_failed_record(tmp_path, plugin, shipped):
    plugin("SQUASH")
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("squash",)), check=CheckOptions())
    rec = next(c for c in r.manifest.check.records if c.artifact == "squash")
    assert not r.ok and rec.status is Status.FAILED
    assert "'logits' has shape [402, 3], PyTorch's has [402, 10]" in rec.reason


@pytest.mark.slow
def test_an_artifact_no_runner_can_load_is_unverified(tmp_path, plugin, shipped):
    plugin("ORPHAN")
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("orphan",)), check=CheckOptions())
    rec = next(c for c in r.manifest.check.records if c.artifact == "orphan")
    assert rec.status is Status.UNVERIFIED and not r.ok and r.manifest.verdict == "failed"


def test_each_backend_is_imported_in_one_plugin_folder_only():
    """coremltools, executorch/torchao, onnxsim, onnxruntime.quantization, onnxscript,
    onnxconverter_common, ai_edge_litert and litert_torch: each named by imports in one folder of
    exporter/formats, nowhere else."""
    owners: dict[str, set[str]] = {}
    for path in (REPO / "exporter").rglob("*.py"):
        text = path.read_text()
        for backend in ("coremltools", "executorch", "torchao", "onnxsim", "onnxruntime.quantization", "onnxscript",
                        "onnxconverter_common", "ai_edge_litert", "litert_torch"):
            if re.search(rf"^\s*(from|import) {re.escape(backend)}\b", text, re.M):
                rel = path.relative_to(REPO / "exporter")
                owners.setdefault(backend, set()).add(
                    "/".join(rel.parts[:2]) if rel.parts[0] == "formats" and len(rel.parts) > 2 else str(rel))
    assert owners, "no backend import found: the scan is broken"
    for backend, where in owners.items():
        assert len(where) == 1 and next(iter(where)).startswith("formats/"), (backend, where)


def test_generic_code_names_no_format():
    """The pipeline, check, bench, report and CLI see formats only through the registry."""
    generic = [p for p in (REPO / "exporter").rglob("*.py") if p.relative_to(REPO / "exporter").parts[0] != "formats"]
    generic += [*(REPO / "kernel").rglob("*.py"), REPO / "cli.py"]
    assert len(generic) > 30, "the scan found too few files: it is broken"
    precisions = {"fp32", "fp16", "int8"}   # a precision's name may equal a format's (fp16, int8)
    names = [f.name for f in formats.FORMATS.values() if f.name not in precisions] + [
        "mlpackage", "coreml", "executorch", "xnnpack"]
    pattern = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, names)))
    hits = [f"{p.name}: {m.group(0)}" for p in generic for m in pattern.finditer(p.read_text())]
    assert not hits, hits


def test_the_cli_lists_each_formats_plugin():
    r = CliRunner().invoke(app, ["formats", "--json"])
    assert r.exit_code == 0
    by_name = {f["name"]: f["plugin"] for f in json.loads(r.stdout)["formats"]}
    assert by_name["pte"] == "executorch" and by_name["ort"] == "onnx" and by_name["coreml-fp16"] == "coreml"


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any depth of the file, relative or absolute), over the
    whole installed package: cli.py, kernel/, models/ and exporter/."""
    import ast
    mods = {"cli": (REPO / "cli.py", False)}
    for top in ("kernel", "models", "exporter"):
        for path in (REPO / top).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = (path, parts[-1] == "__init__")
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("bsconv_export."):
                target = node.module.replace("bsconv_export.", "", 1)
            else:
                continue
            for alias in node.names:
                for candidate in (f"{target}.{alias.name}", target):
                    if candidate in mods and candidate != name:
                        graph[name].add(candidate)
                        break
    return graph


def test_the_package_has_no_import_cycle():
    graph = _package_imports()
    assert graph["exporter.formats.onnx"] >= {"exporter.formats", "exporter.formats.onnx.export"}  # the scan sees imports
    assert "kernel.errors" in graph["models.checkpoint"]
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_rooms_import_each_other_in_one_direction():
    """exporter/'s folders (kit, formats, bundle, export, check, bench, report, sweep, runners, arm64), models/
    and kernel/ as rooms: no two rooms import each other, even through others."""
    def room(m: str) -> str:
        p = m.split(".")
        return f"exporter.{p[1]}" if p[0] == "exporter" and len(p) > 1 else p[0]
    rooms: dict[str, set[str]] = {}
    for a, deps in _package_imports().items():
        rooms.setdefault(room(a), set()).update(room(b) for b in deps if room(b) != room(a))

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and not seen.add(n) and reaches(n, b, seen)) for n in rooms.get(a, ()))
    circles = sorted((a, b) for a in rooms for b in rooms[a] if reaches(b, a, set()))
    assert not circles, circles


def test_the_kernel_imports_nothing_above_it():
    """kernel/ is what models/ and exporter/ share: it imports neither (arrows point down only)."""
    graph = _package_imports()
    up = {m: sorted(n for n in deps if not n.startswith("kernel")) for m, deps in graph.items() if m.startswith("kernel")}
    assert not any(up.values()), up


def test_a_stages_side_files_are_its_records_and_must_be_there(shared_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(shared_bundle("onnx-ort-coreml"), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    ort = next(a for a in manifest["artifacts"] if a["format"] == "ort")
    assert ort["side_files"] == ["model.required_operators.config", "mobile_usability.txt"]
    for side in ("model.required_operators.config", "mobile_usability.txt"):   # no path of the exporting machine
        assert "/tmp" not in (bundle / side).read_text() and str(bundle) not in (bundle / side).read_text(), side
    (bundle / "mobile_usability.txt").unlink()
    rehash(bundle)
    r = CliRunner().invoke(app, ["check", str(bundle)])
    assert r.exit_code == 1 and "mobile_usability.txt beside model.ort for apps, but it is missing" in r.output


def test_onnx_files_carry_the_contracts_metadata_and_nothing_stale(shared_bundle):
    """No onnxsim run report, no quantiser flags: an app finds the contract's keys only."""
    import onnx

    from bsconv_export.exporter.formats.onnx.export import CONTRACT_KEYS
    from bsconv_export.exporter.formats.onnx.runner import OrtFormatRunner
    for name in ("reduced", "onnx-ort-coreml"):
        bundle = shared_bundle(name)
        for f in sorted(bundle.glob("*.onnx")):
            keys = [p.key for p in onnx.load(f, load_external_data=False).metadata_props]
            assert sorted(keys) == sorted(CONTRACT_KEYS), (f.name, keys)
    with OrtFormatRunner(shared_bundle("onnx-ort-coreml") / "model.ort") as r:
        assert sorted(r.metadata()) == sorted(CONTRACT_KEYS)


def test_the_kit_is_what_docs_plugins_md_lists_line_for_line():
    """docs/plugins.md's list under *What a plugin imports* names exactly the kit's names, section by
    section in the kit's order, and each resolves."""
    import bsconv_export.exporter.kit as kit
    text = (REPO / "docs" / "plugins.md").read_text().split("## What a plugin imports", 1)[1]
    listed = [name for line in text.splitlines() if line.startswith("- ")
              for name in re.findall(r"`([A-Za-z_0-9]+)`", line.split(":", 1)[1])]
    assert listed == kit.__all__
    assert all(getattr(kit, name, None) is not None for name in kit.__all__)


def test_the_built_in_plugins_import_only_the_kit_and_the_plugin_types():
    """What a third-party plugin may import is all a built-in one does: from outside its own folder,
    ``Format``, ``Plugin`` and ``preferred`` (exporter.formats) and the kit — no other module of the tool."""
    import ast
    found = []
    for path in sorted((REPO / "exporter" / "formats").glob("*/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 or (node.level == 0 and not (node.module or "").startswith("bsconv_export")):
                continue   # the plugin's own modules; third-party packages
            names = sorted(a.name for a in node.names)
            allowed = (node.level == 2 and node.module is None and set(names) <= {"Format", "Plugin", "preferred"}) or \
                (node.level == 3 and node.module == "kit")
            if not allowed:
                found.append(f"{path.relative_to(REPO)}: from {'.' * node.level}{node.module or ''} import {names}")
    assert not found, found
    assert len(list((REPO / "exporter" / "formats").glob("*/*.py"))) > 20, "the scan found too few files"
