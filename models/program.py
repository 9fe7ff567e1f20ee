"""Loading a ``torch.export`` program file (``.pt2``) without running code from it.

``torch.export.load`` is not safe on a file someone sent (torch 2.13 says so):

* pickled weights and constants are read with ``torch.load(weights_only=False)``,
  opaque constants with ``pickle.loads``, script objects with torch's own
  unpickler, and a sample-input pickle that fails the safe loader is retried
  with the unsafe one;
* operator names resolve by ``getattr`` from ``torch``, ``math`` or ``operator``,
  so a node can name any function reachable from there (``torch.os.system``),
  and running the program calls it with arguments from the file;
* symbolic shape expressions go through ``sympy.sympify`` (``eval``);
* ``guards_code`` strings are compiled into a Python function by ``.module()``.

So this module reads the archive itself, into memory once (no second read of a
file that may change), and refuses all of that before torch sees it: only the
entries ``torch.export.save`` writes for one program, only raw (unpickled)
tensor payloads, only ATen operators (plus ``getitem``) that exist in this
torch, only identifier names, only arithmetic on ``s0``-style symbols (in
sympy's ``Symbol('s0', positive=True, integer=True)`` spelling too), only
plain tuple/list/dict tree specs. Node metadata (stack traces, source functions)
and guard code are dropped from the JSON — all but each node's module path, kept
when it is plain text (torch reads it back as strings; exported files name their
nodes from it) —, the archive is rebuilt in memory from
what passed, and ``torch.export.load`` reads that copy with every ``torch.load``
forced to ``weights_only=True``. A program that needs custom operators is
refused by name: load their library yourself and use ``--model`` instead.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from ..kernel.errors import UserInputError

MAX_PROGRAM_BYTES = 2 << 30
MAX_JSON_BYTES = 64 << 20
MAX_ENTRIES = 100_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FQN = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$|^$")
_ATEN = re.compile(r"^torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")
_EXPR_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\d+(?:\.\d+)?)|([-+*/%(),<>=!]+)|'([su]\d+)')")
_SYMBOL = re.compile(r"^[su]\d+$")
_EXPR_FUNCTIONS = {"Mod", "PythonMod", "FloorDiv", "CeilDiv", "Max", "Min", "Abs", "Eq", "Ne", "Le", "Lt",
                   "Ge", "Gt", "And", "Or", "Not", "True", "False", "oo", "IntTrueDiv", "FloatTrueDiv",
                   "ToFloat", "TruncToInt", "CleanDiv",
                   # torch writes symbols as sympy's srepr: Symbol('s77', positive=True, integer=True)
                   "Symbol", "Integer", "positive", "integer", "nonnegative"}
_TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
_TOP_FILES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_ALLOWED_OTHER_TARGETS = {"_operator.getitem"}


class ProgramError(UserInputError):
    """A program file this tool refuses to load."""


def load_program(path: str | os.PathLike) -> tuple["torch.export.ExportedProgram", str]:
    """The ExportedProgram in ``path`` and the file's sha256, loaded as described above."""
    path = Path(path)
    data = _read_bounded(path)
    digest = hashlib.sha256(data).hexdigest()
    clean = sanitized_archive(data, path.name)
    import torch
    with _weights_only_loads():
        try:
            program = torch.export.load(io.BytesIO(clean))
        except ProgramError:
            raise
        except Exception as e:  # noqa: BLE001 - torch raises many kinds on a bad program
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ProgramError(f"{path.name} is not a program torch {torch.__version__} can load: {first}; "
                               "re-save it with torch.export.save from this torch version") from None
    program._guards_code = []
    _check_loaded(program, path.name)
    return program, digest


def _read_bounded(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ProgramError(f"{path} is not a file; pass a .pt2 written by torch.export.save")
        if size > MAX_PROGRAM_BYTES:
            raise ProgramError(f"{path.name} is {size / 2**30:.1f} GiB, over this tool's limit of "
                               f"{MAX_PROGRAM_BYTES >> 30} GiB for a program file")
        return path.read_bytes()
    except FileNotFoundError:
        raise ProgramError(f"{path} does not exist; pass a .pt2 written by torch.export.save") from None
    except IsADirectoryError:
        raise ProgramError(f"{path} is a folder; pass a .pt2 written by torch.export.save") from None


def sanitized_archive(data: bytes, label: str) -> bytes:
    """The archive rebuilt from the entries that passed, with node metadata and guards dropped."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ProgramError(f"{label} is not a torch.export program (not a zip archive); "
                           "write it with torch.export.save") from None
    if len(infos) > MAX_ENTRIES:
        raise ProgramError(f"{label} holds {len(infos)} entries, more than a program file does")
    if sum(i.file_size for i in infos) > 2 * MAX_PROGRAM_BYTES:
        raise ProgramError(f"{label} expands to more than {2 * MAX_PROGRAM_BYTES >> 30} GiB; refused")
    roots = {PurePosixPath(i.filename).parts[0] for i in infos if PurePosixPath(i.filename).parts}
    if len(roots) != 1:
        raise ProgramError(f"{label} is not one torch.export program (archive roots: {sorted(roots)[:5]})")
    root = roots.pop()
    entries: dict[str, bytes] = {}
    for info in infos:
        rel = info.filename[len(root) + 1:]
        if info.is_dir():
            continue
        parts = PurePosixPath(rel).parts
        if not rel or ".." in parts or rel.startswith("/") or "\\" in rel:
            raise ProgramError(f"{label} holds an entry with an unsafe name: {info.filename!r}")
        if not _allowed_entry(rel):
            raise ProgramError(f"{label} holds {rel!r}, which a plain torch.export program does not "
                               "(AOTInductor, ExecuTorch or pickled objects are not loaded here)")
        entries[rel] = zf.read(info)
    models = [r for r in entries if r.startswith("models/")]
    if models != ["models/model.json"] and sorted(models) != ["models/model.json"]:
        raise ProgramError(f"{label} must hold exactly one program named 'model' (found {models or 'none'})")
    for cfg in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
        if cfg in entries:
            _check_payload_config(_json(entries[cfg], cfg, label), cfg, label)
    if entries.get("data/sample_inputs/model.pt"):  # empty when saved without example inputs
        _check_weights_only(entries["data/sample_inputs/model.pt"], label)
    program = _json(entries["models/model.json"], "models/model.json", label)
    _check_program_json(program, label)
    entries["models/model.json"] = json.dumps(program).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for rel, payload in entries.items():
            z.writestr(f"{root}/{rel}", payload)
    return out.getvalue()


def _allowed_entry(rel: str) -> bool:
    if rel in _TOP_FILES or rel == "models/model.json":
        return True
    if rel in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json",
               "data/sample_inputs/model.pt"):
        return True
    folder, _, name = rel.rpartition("/")
    if folder == "data/weights":
        return re.fullmatch(r"weight_\d+", name) is not None
    if folder == "data/constants":
        return re.fullmatch(r"tensor_\d+", name) is not None
    return False


def _json(raw: bytes, name: str, label: str) -> Any:
    if len(raw) > MAX_JSON_BYTES:
        raise ProgramError(f"{label}: {name} is over {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProgramError(f"{label}: {name} is not valid JSON; the file is damaged") from None


def _check_payload_config(cfg: Any, name: str, label: str) -> None:
    entries = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict):
        raise ProgramError(f"{label}: {name} has no 'config' table")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or not isinstance(fqn, str) or not _FQN.match(fqn):
            raise ProgramError(f"{label}: {name} has a malformed entry {str(fqn)[:80]!r}")
        if meta.get("use_pickle"):
            raise ProgramError(f"{label}: tensor {fqn!r} is stored as a pickle, which can run code; "
                               "only raw tensors are loaded")
        if not re.fullmatch(r"(weight|tensor)_\d+", str(meta.get("path_name", ""))):
            raise ProgramError(f"{label}: {fqn!r} is not a plain tensor (custom or opaque objects are "
                               "pickles and are not loaded)")


def _check_weights_only(raw: bytes, label: str) -> None:
    import torch
    try:
        torch.load(io.BytesIO(raw), weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal by the safe unpickler
        raise ProgramError(f"{label}: its sample inputs are a pickle that the safe loader refuses "
                           "(it could run code)") from None


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path, k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


#: a node's module path (``nn_module_stack``: "key,path,type;…"), which torch reads back as plain strings
_MODULE_STACK = re.compile(r"[A-Za-z0-9_.,;:\[\]()'\" <>-]{1,8192}")


def _kept_metadata(meta: Any) -> dict:
    """Of a node's metadata, only its module path, when it is plain text: the names the exported files
    give their nodes come from it (``/backbone/stage3/unit1/conv2/conv/Conv``)."""
    stack = meta.get("nn_module_stack") if isinstance(meta, dict) else None
    return {"nn_module_stack": stack} if isinstance(stack, str) and _MODULE_STACK.fullmatch(stack) else {}


def _check_program_json(program: Any, label: str) -> None:
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise ProgramError(f"{label}: models/model.json is not a serialized ExportedProgram")
    graph = program["graph_module"].get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise ProgramError(f"{label}: models/model.json has no graph")
    if graph.get("custom_obj_values"):
        raise ProgramError(f"{label}: the program holds custom script objects, which are not loaded")
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise ProgramError(f"{label}: a graph node is malformed")
        _check_target(node.get("target"), label)
        node["metadata"] = _kept_metadata(node.get("metadata"))
    program["guards_code"] = []
    for value in (program.get("range_constraints") or {}):
        _check_expr(value, label)
    for where, key, value in _walk(program):
        if key == "expr_str":
            _check_expr(value, label)
        elif key == "name" and ".graph." in f"{where}." and isinstance(value, str) and not _IDENT.match(value):
            raise ProgramError(f"{label}: graph value name {value[:60]!r} is not an identifier")
        elif key in ("parameter_name", "buffer_name", "tensor_constant_name", "fqn") \
                and isinstance(value, str) and not _FQN.match(value):
            raise ProgramError(f"{label}: {key} {value[:60]!r} is not a dotted name")
        elif key in ("in_spec", "out_spec") and isinstance(value, str):
            _check_treespec(value, label)
        elif key == "as_graph":
            raise ProgramError(f"{label}: the program holds a nested graph (control flow), which is not loaded")


def _check_target(target: Any, label: str) -> None:
    if not isinstance(target, str):
        raise ProgramError(f"{label}: a graph node has no operator")
    if target in _ALLOWED_OTHER_TARGETS:
        return
    m = _ATEN.match(target)
    if m is None:
        raise ProgramError(f"{label} calls {target[:80]!r}, which this tool does not load (only ATen "
                           "operators); for custom operators, export from Python with --model")
    import torch
    packet = getattr(torch.ops.aten, m.group(1), None) if hasattr(torch.ops.aten, m.group(1)) else None
    if packet is None or m.group(2) not in getattr(packet, "overloads", lambda: [])():
        raise ProgramError(f"{label} calls {target!r}, which torch {torch.__version__} does not have; "
                           "re-export it with this torch version")


def _check_expr(expr: Any, label: str) -> None:
    if not isinstance(expr, str) or len(expr) > 500:
        raise ProgramError(f"{label}: a shape expression is malformed")
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise ProgramError(f"{label}: shape expression {expr[:60]!r} is not plain arithmetic on sizes")
        name = m.group(1)
        if name is not None and not (_SYMBOL.match(name) or name in _EXPR_FUNCTIONS):
            raise ProgramError(f"{label}: shape expression {expr[:60]!r} names {name!r}, not a size symbol")
        pos = m.end()


def _check_treespec(spec: str, label: str) -> None:
    try:
        tree = json.loads(spec)
    except ValueError:
        raise ProgramError(f"{label}: an input or output tree spec is not valid JSON") from None
    for _, key, value in _walk(tree):
        if key == "type" and value not in _TREESPEC_TYPES:
            raise ProgramError(f"{label}: inputs or outputs of type {str(value)[:60]!r} are not loaded "
                               "(plain tensors, tuples, lists and dicts only)")


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside, including torch.export's own, reads with ``weights_only=True``."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_loaded(program, label: str) -> None:
    """Defence in depth: what torch built calls only ATen operators and getitem."""
    import operator

    import torch
    for node in program.graph.nodes:
        if node.op == "call_function" and not (isinstance(node.target, torch._ops.OpOverload)
                                              and node.target.namespace == "aten") \
                and node.target is not operator.getitem:
            raise ProgramError(f"{label} calls {node.target!r}, which this tool does not load")
        if node.op in ("call_module", "call_method"):
            raise ProgramError(f"{label} holds a {node.op} node, which an exported program does not")
