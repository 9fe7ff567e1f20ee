"""The emulated side of an ARM64 runner (runs on the kit's aarch64 Python; numpy and the runtime only).

A plugin's worker script calls :func:`serve` with a loader ``load(path, threads) -> (facts, run)``.
The protocol, one JSON line each way: on start the worker prints ``facts`` (input and output names,
the input's shape, the runtime and its version); then for each request ``{"input": X, "shape": [N, C,
H, W], "output": Y}`` it reads X (raw float32), runs every row in the model's batch (the last chunk
padded), writes the contract's output (``logits``, else the first) to Y as raw float32 and answers
``{"ok": true, "shape": [N, K]}``, or ``{"error": "..."}`` when the model failed. Raw files keep the
protocol open to workers in any language (the ExecuTorch runner is C++).
"""
import json
import sys

import numpy as np


def serve(load) -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    facts, run = load(path, threads)
    _say(facts)
    batch = facts["input_shape"][0] if isinstance(facts["input_shape"][0], int) else None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            x = np.fromfile(request["input"], dtype=np.float32).reshape(request["shape"])
            step = batch or len(x)
            name = "logits" if "logits" in facts["outputs"] else facts["outputs"][0]
            chunks = []
            for i in range(0, len(x), step):
                part = x[i:i + step]
                n = len(part)
                if n < step:
                    part = np.concatenate([part, np.zeros((step - n, *part.shape[1:]), part.dtype)])
                chunks.append(np.asarray(run(np.ascontiguousarray(part))[name], dtype=np.float32)[:n])
            y = np.concatenate(chunks)
            y.tofile(request["output"])
            _say({"ok": True, "shape": list(y.shape)})
        except Exception as e:  # noqa: BLE001 - the model failing on ARM is a result, reported to the host
            _say({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})


def _say(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
