"""INT8 where it pays: which parts of a network the int8 stage leaves in float, chosen by measurement.

One recipe for every network loses where int8 kernels are slower than float ones
(on onnxruntime's x86 CPU kernels, measured: depthwise convolutions, and
squeeze-excitation and hard-swish, which run in float between dequantise and
quantise pairs on small tensors). So the stage measures, on this runtime:

1. **Groups.** The float graph's nodes fall into groups by the module path in
   their names (``/backbone/stage3/unit1/se_unit/conv2/Conv`` → group
   ``backbone/stage3/unit1/se_unit``: a unit's direct children; outside units,
   the first two path levels). A group is what stays in float or not.
2. **Latency per group.** The float model and the all-int8 model each run under
   onnxruntime's profiler with the deployment's thread count; every kernel the
   optimised graph runs (fused ``QLinearConv``, inserted reorders, ORT's own
   unnamed nodes) is attributed to a group through node and tensor names, else
   to the group that ran just before it. A group whose int8 kernels take longer
   than its float ones (by more than ``margin``) is kept in float.
3. **The gate.** The candidate must agree with the float model on held-back
   inputs (top-1 agreement, and accuracy where labels exist) at the int8
   tolerance; while it does not, the groups with the lowest activation SQNR go
   back to float, one, then two, then four at a time.
4. **Verification.** The plan is a prediction; the stage then times the mixed
   file against the all-int8 one, interleaved, and ships the faster of those
   that pass the gate.

:func:`decide` holds the decision and takes its measurements as functions, so it
is tested on synthetic costs; the measuring functions are below it.
"""
from __future__ import annotations

import collections
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ...kit import bootstrap_ci

#: a path component that names a repeated unit (MobileNet/ResNet ``unitN``, timm ``blocksN``, ``layerN``)
UNIT = re.compile(r"(unit|block|blocks|layer)\d+$")
#: suffixes the quantiser and onnxruntime's optimiser add to the float graph's node and tensor names
_DERIVED = re.compile(r"(_token_\d+|_nchwc|_QuantizeLinear(_Output)?|_DequantizeLinear(_Output)?|_quantized"
                      r"|_scale|_zero_point)$")


def group_of(node_name: str) -> str | None:
    """The group of a float-graph node named by its module path, or None when the name has no path."""
    parts = [p for p in node_name.strip("/").split("/")[:-1] if p]
    if not parts:
        return None
    for i, p in enumerate(parts):
        if UNIT.search(p):
            return "/".join(parts[:i + 2])
    return "/".join(parts[:2])


@dataclass
class GraphGroups:
    """The float graph's nodes and tensors by group, and each group's weight elements."""
    node_group: dict[str, str | None]
    tensor_group: dict[str, str | None]
    weights: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, model) -> "GraphGroups":
        """Groups of an ``onnx.ModelProto``; a node without a path joins its first input's group."""
        node_group: dict[str, str | None] = {}
        tensor_group: dict[str, str | None] = {}
        weights: dict[str, int] = collections.Counter()
        sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) >= 2}
        for n in model.graph.node:
            g = group_of(n.name)
            if g is None:
                g = next((tensor_group[i] for i in n.input if tensor_group.get(i)), None)
            node_group[n.name] = g
            for o in n.output:
                tensor_group[o] = g
            if g:
                weights[g] += sum(sizes.get(i, 0) for i in n.input)
        return cls(node_group, tensor_group, dict(weights))

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(g for g in self.node_group.values() if g))

    def nodes(self, groups) -> list[str]:
        """The float graph's node names in ``groups`` (what ``nodes_to_exclude`` takes)."""
        wanted = set(groups)
        return [n for n, g in self.node_group.items() if g in wanted and n]

    def group_for(self, names: list[str]) -> str | None:
        """The group of the first of ``names`` (node or tensor names, possibly with suffixes the
        quantiser or onnxruntime added) that the float graph knows."""
        for name in names:
            for candidate in (name, _strip(name)):
                if self.node_group.get(candidate):
                    return self.node_group[candidate]
                if self.tensor_group.get(candidate):
                    return self.tensor_group[candidate]
        return None


def _strip(name: str) -> str:
    while True:
        shorter = _DERIVED.sub("", name)
        if shorter == name:
            return name
        name = shorter


# --- the decision ------------------------------------------------------------------------------

@dataclass
class Plan:
    """What the int8 stage decided, and the measurements it decided on (recorded in the manifest)."""
    kept: list[str]                                   # groups left in float
    reasons: dict[str, str] = field(default_factory=dict)   # group -> "slower in int8" / "gate"
    float_us: dict[str, float] = field(default_factory=dict)
    int8_us: dict[str, float] = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)  # each gate run: kept count, agreement, passed
    passed_gate: bool = False
    candidates: dict[str, float] = field(default_factory=dict)  # proposal -> whole-model latency / fp32
    over_all_int8: dict[str, float] = field(default_factory=dict)  # the fastest mixed plan / all-int8
    float_weight_share: dict[str, float] = field(default_factory=dict)  # proposal -> weights left in float
    chosen: str = "all int8"
    gate_note: str | None = None

    def to_dict(self) -> dict:
        groups = sorted(set(self.float_us) | set(self.int8_us), key=lambda g: -self.float_us.get(g, 0.0))
        return {"chosen": self.chosen, "latency_over_fp32": self.candidates,
                "float_weight_share": self.float_weight_share,
                **({"fastest_mixed_over_all_int8": self.over_all_int8} if self.over_all_int8 else {}),
                "kept_fp32_groups": self.kept, "passed_gate": self.passed_gate, "rounds": self.rounds,
                **({"gate": self.gate_note} if self.gate_note else {}),
                "groups": [{"group": g, "float_us": round(self.float_us.get(g, 0.0), 1),
                            "int8_us": round(self.int8_us.get(g, 0.0), 1),
                            "kept_fp32": g in self.kept, **({"why": self.reasons[g]} if g in self.reasons else {})}
                           for g in groups]}


def slower_in_int8(float_us: dict[str, float], int8_us: dict[str, float], margin: float = 0.05,
                   floor_us: float = 1.0) -> list[str]:
    """Groups whose int8 kernels (with their quantise/dequantise nodes) take longer than the float
    ones by more than ``margin`` and ``floor_us``, slowest first. A group with no float time of its
    own (an Add that float fuses into the convolution before it) counts its int8 time as loss."""
    loss = {g: q - float_us.get(g, 0.0) for g, q in int8_us.items()}
    slow = [g for g, d in loss.items() if d > floor_us and int8_us[g] > float_us.get(g, 0.0) * (1 + margin)]
    return sorted(slow, key=lambda g: -loss[g])


#: how coarse a region stays in float: a unit's child (``…/unit3/se_unit``), a whole unit, a whole stage
LEVELS = ("block", "unit", "stage")


def coarsen(group: str, level: str) -> str:
    """``group`` at ``level``: ``backbone/stage3/unit1/se_unit`` is ``backbone/stage3/unit1`` as a
    unit and ``backbone/stage3`` as a stage; a group outside any unit is itself at every level."""
    parts = group.split("/")
    unit = next((i for i, p in enumerate(parts) if UNIT.search(p)), None)
    if unit is None or level == "block":
        return group
    return "/".join(parts[:unit + 1] if level == "unit" else parts[:max(unit, 1)])


def plan_at(level: str, groups: list[str], float_us: dict[str, float], int8_us: dict[str, float],
            margin: float = 0.05) -> list[str]:
    """The groups to keep in float when regions at ``level`` are kept whole: a region stays in
    float when its int8 kernels, summed, are slower than its float ones."""
    f: dict[str, float] = collections.Counter()
    q: dict[str, float] = collections.Counter()
    for g, v in float_us.items():
        f[coarsen(g, level)] += v
    for g, v in int8_us.items():
        q[coarsen(g, level)] += v
    slow = set(slower_in_int8(dict(f), dict(q), margin))
    return [g for g in groups if coarsen(g, level) in slow]


def decide(groups: list[str], float_us: dict[str, float], int8_us: dict[str, float],
           build: Callable[[list[str]], Path], time_models: Callable[[dict[str, Path]], dict[str, np.ndarray]],
           gate: Callable[[Path], dict], sensitivity: list[str], weights: dict[str, int] | None = None,
           margin: float = 0.05, min_gain: float = 0.05, max_float_weights: float = 0.5,
           max_rounds: int = 6) -> tuple[Plan, Path]:
    """The groups to keep in float, and the file built with them.

    The per-group profile says where int8 kernels lose, but not what each float island costs at
    its borders (a quantise/dequantise pair, a layout change), so it proposes candidates at three
    granularities (:data:`LEVELS`) besides all-int8, and ``time_models`` decides: it returns the
    per-round latencies of the named files and of ``"fp32"``, timed interleaved round by round. A
    mixed candidate wins only when it is faster than all-int8 by at least ``min_gain`` (median of
    the per-round ratios) and surely faster (the 95 % interval's upper end below 1: a noisy
    machine must not trade the small file for a gain it did not show), and keeps at most
    ``max_float_weights`` of the weights
    (``weights``: elements per group) in float: past that the file is no longer the small one
    int8 promises (the fp32 file is in the bundle already). The gate then runs on the winner;
    while it fails, the groups most damaged by int8 (``sensitivity``: lowest SQNR first) go back
    to float, one, then two, then four at a time.

    ``build(kept)`` → a quantised file with those groups in float; ``gate(path)`` →
    ``{"passed": bool, ...}``."""
    plan = Plan(kept=[], float_us=float_us, int8_us=int8_us)
    total = sum((weights or {}).values()) or 1
    proposals: dict[str, list[str]] = {"all int8": []}
    for level in LEVELS:
        kept = plan_at(level, groups, float_us, int8_us, margin)
        if kept and kept not in proposals.values():
            proposals[f"float {level}s where int8 is slower"] = kept
    float_share = {name: sum((weights or {}).get(g, 0) for g in kept) / total for name, kept in proposals.items()}
    files = {name: build(kept) for name, kept in proposals.items()}
    latency = time_models(files)
    plan.candidates = {n: round(float(np.median(latency[n] / latency["fp32"])), 3) for n in proposals}
    plan.float_weight_share = {name: round(v, 3) for name, v in float_share.items()}
    eligible = [n for n in proposals if float_share[n] <= max_float_weights]
    best = min(eligible, key=plan.candidates.get)
    if best != "all int8":
        gain = latency[best] / latency["all int8"]
        high = bootstrap_ci(gain)[1]
        plan.over_all_int8 = {"ratio": round(float(np.median(gain)), 3), "ci95_high": round(high, 3)}
        if np.median(gain) > 1 - min_gain or high >= 1.0:
            best = "all int8"
    plan.chosen = best
    plan.kept = list(proposals[best])
    plan.reasons = {g: "slower in int8" for g in plan.kept}
    candidate = files[best]
    queue = [g for g in sensitivity if g not in plan.kept and g in groups]
    step = 1
    for _ in range(max_rounds + 1):
        result = gate(candidate)
        plan.rounds.append({"kept_fp32": len(plan.kept), **result})
        if result["passed"]:
            plan.passed_gate = True
            return plan, candidate
        more = queue[:step]
        share = sum((weights or {}).get(g, 0) for g in plan.kept + more) / total
        if not more or share > max_float_weights or len(plan.rounds) > max_rounds:
            break
        for g in more:
            plan.kept.append(g)
            plan.reasons[g] = "gate"
        queue, step = queue[step:], step * 2
        candidate = build(plan.kept)
    # the gate cannot be met with an int8 file: ship the fastest one, and the check will say so
    plan.gate_note = (f"not met: {plan.rounds[-1].get('agreement', 0):.1%} agreement with {len(plan.kept)} groups "
                      f"in float; int8 costs accuracy throughout this network, so more float would leave no "
                      f"int8 file (the fp32 one is in the bundle)")
    plan.kept = list(proposals[best])
    plan.reasons = {g: "slower in int8" for g in plan.kept}
    return plan, files[best]


# --- the measurements ---------------------------------------------------------------------------

def profile_groups(path: Path, x: np.ndarray, groups: GraphGroups, threads: int | None,
                   budget_s: float = 1.0, min_runs: int = 10, max_runs: int = 100) -> dict[str, float]:
    """Median kernel microseconds per group of one run of ``path`` on onnxruntime's CPU provider."""
    import time

    import onnx

    from ...kit import INPUT_NAME
    from ...kit import onnxruntime
    ort = onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])  # writes the graph that runs
        optimised = onnx.load(so.optimized_model_filepath, load_external_data=False)
        so.optimized_model_filepath = ""
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {INPUT_NAME: x}
        session.run(None, feed)
        runs, t_end = 0, time.perf_counter() + budget_s
        while runs < min_runs or (runs < max_runs and time.perf_counter() < t_end):
            session.run(None, feed)
            runs += 1
        events = json.loads(Path(session.end_profiling()).read_text())
    kernel_group = {}
    seen = dict(groups.tensor_group)
    for n in optimised.graph.node:
        g = groups.group_for([n.name, *n.output]) or next((seen[i] for i in n.input if seen.get(i)), None)
        kernel_group[n.name] = g
        for o in n.output:
            seen[o] = g
    per_kernel: dict[str, list[float]] = collections.defaultdict(list)
    previous = None
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][:-len("_kernel_time")]
        # onnxruntime names the nodes it creates unnamed (OpType_N); they run where they were inserted
        if kernel_group.get(name) is None:
            kernel_group[name] = previous
        previous = kernel_group[name]
        per_kernel[name].append(float(e["dur"]))
    totals: dict[str, float] = collections.Counter()
    for name, durations in per_kernel.items():
        if kernel_group.get(name):
            # the first run is the warm-up one
            totals[kernel_group[name]] += float(np.median(durations[1:] or durations))
    return dict(totals)


def logits(path: Path, x: np.ndarray, batch: int, threads: int | None = None) -> np.ndarray:
    """``path``'s outputs on ``x``, ``batch`` samples at a time, on onnxruntime's CPU provider."""
    from ...kit import INPUT_NAME, OUTPUT_NAME
    from .runner import OnnxRunner
    with OnnxRunner(path, "cpu", threads=threads, spinning=False) as runner:
        return np.concatenate([runner.infer({INPUT_NAME: x[i:i + batch]})[OUTPUT_NAME]
                               for i in range(0, len(x), batch)])


def top1_gate(candidate: Path, reference_logits: np.ndarray, x: np.ndarray, batch: int,
              min_agreement: float, labels: np.ndarray | None = None, max_accuracy_drop: float | None = None,
              threads: int | None = None) -> dict:
    """Top-1 agreement of ``candidate`` with the float model's logits on ``x`` (and the accuracy
    drop where labels exist); ``passed`` when both are within the int8 tolerance."""
    out = logits(candidate, x, batch, threads)
    agree = float(np.mean(out.argmax(1) == reference_logits.argmax(1)))
    result = {"agreement": round(agree, 4), "samples": int(len(x))}
    passed = agree >= min_agreement
    if labels is not None and max_accuracy_drop is not None:
        drop = float(np.mean(reference_logits.argmax(1) == labels) - np.mean(out.argmax(1) == labels))
        result["accuracy_drop"] = round(drop, 4)
        passed = passed and drop <= max_accuracy_drop + 1e-12
    result["passed"] = bool(passed)
    return result
