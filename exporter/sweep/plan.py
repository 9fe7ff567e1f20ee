"""A sweep's plan: TOML text read into :class:`Job` rows, or a plan written for the zoo.

A plan is a ``[defaults]`` table and ``[[job]]`` tables whose keys are ``export``'s options with
dashes as underscores (``model`` is the zoo name; ``entry_point`` and ``model_args`` stand for
``--model``/``--model-arg``; ``formats`` is a list; ``check = false`` is ``--no-check``; every
format option by its declared name), and ``out``. Reading it is bounded (size, jobs, nesting) and
every problem is one line naming the job and key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...kernel.errors import UserInputError
from ...kernel.safe_io import read_regular
from ...kernel.sealed import refuse_unless_replaceable, seal_text, write_sealed

MAX_PLAN_BYTES = 1 << 20
MAX_JOBS = 10_000
SCHEMA = "bsconv-export-sweep/1"
#: plan keys that name the model (the rest are export options)
MODEL_KEYS = ("model", "checkpoint", "entry_point", "model_args", "program", "input_spec", "mean", "std", "labels")
PIPELINE_KEYS = ("formats", "input_size", "batch", "dynamic_batch", "force", "replace_anyway", "check")


@dataclass(frozen=True)
class Job:
    index: int
    out: str
    model: dict[str, Any] = field(default_factory=dict)      # request_from_options' keywords
    options: dict[str, Any] = field(default_factory=dict)    # ExportOptions' keywords
    check: bool = True

    @property
    def name(self) -> str:
        return Path(self.out).name


def _bad(where: str, message: str) -> UserInputError:
    return UserInputError(f"{where}: {message}; fix the plan (keys are export's options with dashes as "
                          "underscores, 'model' for the zoo name, 'out' for the bundle)")


def parse_plan(text: str, where: str, base: Path) -> list[Job]:
    """The plan's jobs, each key checked; relative paths are relative to the plan's folder."""
    import tomllib

    from ..formats import declared_options
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserInputError(f"{where} is not valid TOML ({e}); fix the plan") from None
    except RecursionError:   # tomllib recurses once per nested array or inline table
        raise UserInputError(f"{where} nests its values too deeply for a plan; fix the plan") from None
    unknown_top = set(data) - {"defaults", "job"}
    if unknown_top:
        raise _bad(where, f"unknown table {sorted(unknown_top)[0]!r} (a plan has [defaults] and [[job]])")
    defaults = data.get("defaults", {})
    jobs = data.get("job", [])
    if not isinstance(defaults, dict) or not isinstance(jobs, list) or not jobs:
        raise _bad(where, "no [[job]] tables")
    if len(jobs) > MAX_JOBS:
        raise _bad(where, f"{len(jobs)} jobs, more than the {MAX_JOBS} a plan may hold")
    declared = declared_options()
    allowed = {*MODEL_KEYS, *PIPELINE_KEYS, *declared, "out"}
    out: list[Job] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(jobs, 1):
        at = f"{where}, job {i}"
        if not isinstance(raw, dict):
            raise _bad(at, "a job must be a table")
        job = {**defaults, **raw}
        unknown = sorted(set(job) - allowed)
        if unknown:
            raise _bad(at, f"unknown key {unknown[0]!r}")
        if not isinstance(job.get("out"), str) or not job["out"]:
            raise _bad(at, "'out' (the bundle folder) is missing")
        dest = str((base / job["out"]).resolve()) if not Path(job["out"]).is_absolute() else job["out"]
        if dest in seen:
            raise _bad(at, f"'out' {job['out']!r} is job {seen[dest]}'s too; each job needs its own bundle")
        seen[dest] = i
        model = {"arch": job.get("model"), "checkpoint": _path(job, "checkpoint", base, at),
                 "model": job.get("entry_point"), "model_arg": _model_args(job.get("model_args"), at),
                 "program": _path(job, "program", base, at), "input_spec": _path(job, "input_spec", base, at),
                 "mean": _csv_floats(job.get("mean"), "mean", at), "std": _csv_floats(job.get("std"), "std", at),
                 "labels": _path(job, "labels", base, at)}
        for key in ("arch", "model"):
            if model[key] is not None and not isinstance(model[key], str):
                raise _bad(at, f"'{'model' if key == 'arch' else 'entry_point'}' must be text")
        options: dict[str, Any] = {}
        formats = job.get("formats")
        if formats is not None:
            if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
                raise _bad(at, "'formats' must be a list of format names")
            from ..formats import parse_formats
            options["formats"] = parse_formats(",".join(formats))
        for key, kind in (("input_size", int), ("batch", int), ("dynamic_batch", bool), ("force", bool),
                          ("replace_anyway", bool)):
            if key in job:
                if not isinstance(job[key], kind) or (kind is int and isinstance(job[key], bool)):
                    raise _bad(at, f"'{key}' must be {'true or false' if kind is bool else 'a whole number'}")
                options[key] = job[key]
        for name, opt in declared.items():
            if name in job:
                value = job[name]
                try:
                    options[name] = opt.from_json(value)
                except ValueError as e:
                    raise _bad(at, str(e)) from None
                if opt.type is str and name == "calibration" and value not in ("random",):
                    options[name] = str(_path(job, name, base, at))
        check = job.get("check", True)
        if not isinstance(check, bool):
            raise _bad(at, "'check' must be true or false")
        out.append(Job(index=i, out=dest, model=model, options=options, check=check))
    return out


def _path(job: dict, key: str, base: Path, at: str) -> Path | None:
    value = job.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(at, f"'{key}' must be a path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _model_args(value: Any, at: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise _bad(at, "'model_args' must be a table of key = value")
    return [f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}" for k, v in value.items()]


def _csv_floats(value: Any, key: str, at: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _bad(at, f"'{key}' must be a list of numbers")
    return ",".join(repr(float(v)) for v in value)


def read_plan(path: str | Path) -> list[Job]:
    path = Path(path)
    text = read_regular(path, "the sweep plan", max_bytes=MAX_PLAN_BYTES).decode("utf-8", "replace")
    return parse_plan(text, str(path), path.parent.resolve())


def zoo_plan(pattern: str, out: Path, formats: tuple[str, ...] | None) -> str:
    """A plan (TOML text) with one job per zoo name matching ``pattern``, bundles under ``out``."""
    from ...models import list_models
    names = list_models(pattern)
    if not names:
        raise UserInputError(f"no zoo model matches {pattern!r}; list them with 'bsconv-export models'")
    lines = [f"# bsconv-export sweep plan: the zoo models matching {pattern!r}", "[defaults]"]
    if formats:
        lines.append("formats = [" + ", ".join(f'"{f}"' for f in formats) + "]")
    lines.append("")
    for name in names:
        lines += ["[[job]]", f'model = "{name}"', f'out = "{(out / name).resolve()}"', ""]
    return "\n".join(lines)




def write_zoo_plan(pattern: str, out: Path, formats: tuple[str, ...] | None,
                   results: Path | None = None) -> tuple[Path, Path]:
    """Write ``OUT/sweep.toml`` for the zoo models matching ``pattern`` (sealed: a later run replaces
    only a plan this tool wrote) and return it with where its results go (``results`` or
    ``OUT/sweep.json``). A user's file at either place is refused before anything is written."""
    if not out.parent.is_dir():
        raise UserInputError(f"cannot write {out}: {out.parent} does not exist; create it first")
    text = seal_text(zoo_plan(pattern, out, formats))
    plan, dest = out / "sweep.toml", results or out / "sweep.json"
    keep_plan = f"run it with 'bsconv-export sweep {plan}', or move it away"
    if out.is_dir() or out.is_symlink():
        refuse_unless_replaceable(plan, keep_plan)
        refuse_unless_replaceable(dest, KEEP_RESULTS)
    out.mkdir(exist_ok=True)
    write_sealed(plan, text, keep_plan)
    return plan, dest


#: what a refusal to replace the results file tells the user
KEEP_RESULTS = "move it away, or name another file with --results"
