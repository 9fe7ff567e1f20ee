"""The folders a user can choose that the tool writes into: it removes or replaces only what it made.

Issue 37: ``BSCONV_EXPORT_STAGE_CACHE`` pointed at a user's folder made ``cache --clear`` delete a
folder holding an ``entry.json`` and eviction rename a user's link. The cache folder is now the
tool's only when the tool made it (a marker at its root); inside it only hex-keyed entry folders
are touched. The same rule for ``BSCONV_EXPORT_CACHE`` (kits built aside).
"""
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.kernel.owned import FOLDER_MARKER

from test_hostile import snapshot

runner = CliRunner()
CLI = os.path.join(os.path.dirname(sys.executable), "bsconv-export")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def user_home(h):
    """The issue's reproduction: a project with an entry.json, a document, a link to it."""
    (h / "project").mkdir(parents=True)
    (h / "project" / "entry.json").write_text('{"a":1}')
    (h / "project" / "main.py").write_text("print(1)\n")
    (h / "Documents").mkdir()
    (h / "Documents" / "thesis.txt").write_text("thesis\n")
    (h / "linked").symlink_to(h / "Documents")
    (h / ("ab" * 32)).mkdir()                                     # a folder named like a cache key
    (h / ("ab" * 32) / "entry.json").write_text('{"schema": 1}')
    return sorted(h.iterdir())


def test_a_users_folder_is_refused_as_the_stage_cache_and_left_byte_identical(tmp_path, monkeypatch):
    h = tmp_path / "h"
    owned = user_home(h)
    before = snapshot([h])
    monkeypatch.setenv("BSCONV_EXPORT_STAGE_CACHE", str(h))
    for args in (("cache", "--clear"), ("cache",), ("cache", "--json"),
                 ("export", "--out", tmp_path / "b", "--formats", "pt2")):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "BSCONV_EXPORT_STAGE_CACHE" in r.output and str(h) in r.output and "Traceback" not in r.output
        assert snapshot([h]) == before and sorted(h.iterdir()) == owned, args
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_an_empty_or_new_folder_becomes_the_cache_and_only_its_entries_are_touched(tmp_path, monkeypatch, shipped):
    from bsconv_export.exporter.export.run import export_bundle
    from bsconv_export.exporter.check.run import CheckOptions
    from bsconv_export.exporter.kit.options import ExportOptions
    from bsconv_export.exporter.export.stagecache import StageCache
    cache = tmp_path / "new" / "cache"
    monkeypatch.setenv("BSCONV_EXPORT_STAGE_CACHE", str(cache))
    r = export_bundle(shipped, tmp_path / "a", ExportOptions(formats=("pt2", "onnx")), check=CheckOptions())
    assert r.ok and (cache / FOLDER_MARKER).is_file()
    # the user then keeps things in the tool's folder: a folder with an entry.json, a link, a key-named
    # link to their documents, a loose file
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("thesis")
    (cache / "project").mkdir()
    (cache / "project" / "entry.json").write_text('{"a": 1}')
    (cache / "linked").symlink_to(docs)
    (cache / ("cd" * 32)).symlink_to(docs)
    (cache / "notes.txt").write_text("mine")
    mine = [cache / "project", cache / "linked", cache / ("cd" * 32), cache / "notes.txt", docs]
    before = snapshot(mine)
    # exports with a byte limit that evicts everything, a corrupted entry discarded, --clear
    monkeypatch.setenv("BSCONV_EXPORT_STAGE_CACHE_BYTES", "1")
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("pt2", "onnx"), opset=19), check=CheckOptions())
    assert r.ok and snapshot(mine) == before
    monkeypatch.delenv("BSCONV_EXPORT_STAGE_CACHE_BYTES")
    export_bundle(shipped, tmp_path / "c", ExportOptions(formats=("pt2", "onnx")), check=CheckOptions())
    entries = StageCache().entries()
    assert entries
    for _, _, key in entries:
        (cache / key / "entry.json").write_text("{not json")
    r = export_bundle(shipped, tmp_path / "d", ExportOptions(formats=("pt2", "onnx")), check=CheckOptions())
    assert r.ok and not any(x.reused for x in r.records) and snapshot(mine) == before
    res = invoke("cache", "--clear", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["removed"] == len(entries) and out["entries"] == 0
    assert snapshot(mine) == before and all(os.path.lexists(p) for p in mine)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        ["project", "linked", "cd" * 32, "notes.txt", "stats.json"])


def test_no_cache_makes_no_cache_folder(tmp_path, monkeypatch, shipped):
    from bsconv_export.exporter.export.run import export_bundle
    from bsconv_export.exporter.check.run import CheckOptions
    from bsconv_export.exporter.kit.options import ExportOptions
    cache = tmp_path / "never"
    monkeypatch.setenv("BSCONV_EXPORT_STAGE_CACHE", str(cache))
    r = export_bundle(shipped, tmp_path / "a", ExportOptions(formats=("pt2",)), check=CheckOptions(), cache=False)
    assert r.ok and not cache.exists()
    r = invoke("cache")
    assert r.exit_code == 0 and not cache.exists(), r.output


def test_a_size_limit_that_is_not_a_number_is_one_line(monkeypatch):
    monkeypatch.setenv("BSCONV_EXPORT_STAGE_CACHE_BYTES", "abc")
    r = invoke("cache")
    assert r.exit_code == 2 and "BSCONV_EXPORT_STAGE_CACHE_BYTES" in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.parametrize("where", ["entry", "stats"])
def test_a_fifo_in_the_cache_never_hangs_an_export(tmp_path, where):
    cache = tmp_path / "cache"
    env = {**os.environ, "BSCONV_EXPORT_STAGE_CACHE": str(cache), "BSCONV_EXPORT_JOBS": "1"}
    cmd = [CLI, "export", "--out", str(tmp_path / "a"), "--formats", "pt2", "--json"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    if where == "stats":
        (cache / "stats.json").unlink()
        os.mkfifo(cache / "stats.json")
    else:
        key = next(p for p in cache.iterdir() if len(p.name) == 64)
        (key / "entry.json").unlink()
        os.mkfifo(key / "entry.json")
    for extra in ([], ["--no-cache"]):
        r = subprocess.run([CLI, "export", "--out", str(tmp_path / f"b{len(extra)}"), "--formats", "pt2", "--json",
                            *extra], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-800:]


def test_a_users_folder_at_a_kits_name_is_never_replaced(tmp_path, monkeypatch):
    """``BSCONV_EXPORT_CACHE`` names where kits are built aside: a folder there that the tool did not make
    (no marker inside) is refused in one line, whatever its name."""
    from bsconv_export.exporter.formats.litert import converter
    monkeypatch.setenv("BSCONV_EXPORT_CACHE", str(tmp_path / "h"))
    target = converter.env_dir()
    (target / "bin").mkdir(parents=True)
    (target / "bin" / "my-script").write_text("mine")
    (tmp_path / "h" / "notes.txt").write_text("notes")
    before = snapshot([tmp_path / "h"])
    r = invoke("setup", "litert")
    assert r.exit_code == 2 and str(target) in r.output and "Traceback" not in r.output, r.output
    assert snapshot([tmp_path / "h"]) == before
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == sorted([target.name, "notes.txt"])


def test_built_aside_replaces_only_what_it_made(tmp_path):
    from bsconv_export.kernel.cache_dirs import built_aside
    from bsconv_export.kernel.errors import UserInputError
    target = tmp_path / "kit"
    with built_aside(target, "a kit") as b:
        (b / "half").write_text("1")
    with built_aside(target, "a kit") as b:          # ours (its marker): replaced
        (b / "whole").write_text("2")
    assert (target / "whole").is_file() and not (target / "half").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "x").write_text("x")
    with pytest.raises(UserInputError, match="did not make it"):
        with built_aside(other, "a kit"):
            pass
    assert (other / "x").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["kit", "mine"]


def test_a_folder_another_process_marks_between_two_looks_is_accepted(tmp_path, monkeypatch):
    """The CI race (two exports, one new cache folder): the second process looked for the marker just
    before the first wrote it, then found the folder not empty. It must accept the folder, not refuse it."""
    from bsconv_export.kernel import owned
    folder = tmp_path / "cache"
    folder.mkdir()
    real = owned.has_marker
    looks = []

    def first_look_misses(path, name, text):
        looks.append(path)
        if len(looks) == 1:                     # the other process marks and fills it right after
            owned.write_marker(path, name, text)
            (path / ("ab" * 32)).mkdir()
            return False
        return real(path, name, text)

    monkeypatch.setattr(owned, "has_marker", first_look_misses)
    assert owned.tool_folder(folder, "stage cache", "BSCONV_EXPORT_STAGE_CACHE", create=True) == folder
    assert len(looks) == 2
