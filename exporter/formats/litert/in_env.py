"""What runs inside the LiteRT converter's own environment (see converter.py): two commands.

* ``convert MODEL.pt2 OUT.tflite N,C,H,W``: litert-torch converts the program to a raw ``.tflite``.
* ``quantize FP32.tflite CALIBRATION.npz OUT.tflite IO``: ai-edge-quantizer's static int8 recipe
  (int8 per-channel symmetric weights, int8 per-tensor asymmetric activations) on the fp32 file,
  calibrated on the npz's ``input`` rows, one batch at a time. ``IO`` is ``float`` (the graph's
  input and output stay fp32, quantised and dequantised inside the file: what an app's pixel rule
  feeds) or ``int8`` (the app quantises with the input tensor's scale and zero point).

  The activation ranges are the running minimum and maximum over every calibration batch. The
  quantizer's default update is a moving average (weight 0.95 on what it saw before), which
  shrinks the ranges toward the last batches' and clips the rest: on the shipped model that put
  the logits at 0.86× the reference (the int8 gate allows 1 ± 0.05); running min/max gives 0.995
  (docs/litert.md has the measurement).

This script imports nothing of bsconv-export: it runs in the converter environment, whose pins
(litert-torch's) cannot share bsconv-export's. It is handed only files the export itself just
wrote into the bundle being built (``model.pt2``, ``model.tflite``) and calibration rows the export
wrote, never a file someone sent. Before anything is imported (it runs with ``-S``, so not even a
``.pth`` file of site-packages), every socket connection but the loopback's is refused: neither
command needs the network, and neither may use one.
"""
import socket
import sys


def _refuse_network(allowed: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")) -> None:
    """Every IPv4/IPv6 connection to a host outside ``allowed`` fails before the system call."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def host_of(address):
        return address[0] if isinstance(address, tuple) else None

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and host_of(address) not in allowed:
            raise OSError(f"bsconv-export's LiteRT conversion makes no network connections (to {address})")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and host_of(address) not in allowed:
            return 111   # ECONNREFUSED
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


def convert(pt2: str, out: str, shape: str) -> None:
    import torch
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    program = torch.export.load(pt2)
    import litert_torch
    edge = litert_torch.convert(program.module(), (torch.zeros([int(v) for v in shape.split(",")]),))
    edge.export(out)


def _running_min_max(seen: dict, new: dict) -> dict:
    """The calibration statistic: the widest range any batch showed (see the module docstring)."""
    if not seen:
        return new
    import numpy as np
    return {"min": np.minimum(seen["min"], new["min"]), "max": np.maximum(seen["max"], new["max"])}


def quantize(fp32: str, calibration: str, out: str, io: str) -> None:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe_manager

    with np.load(calibration, allow_pickle=False) as f:
        x = np.ascontiguousarray(f["input"], dtype=np.float32)
    interpreter = Interpreter(model_path=fp32)
    (key, signature), = interpreter.get_signature_list().items()
    (input_name,) = signature["inputs"]
    batch = int(interpreter.get_input_details()[0]["shape"][0])
    data = {key: [{input_name: x[i:i + batch]} for i in range(0, len(x) - batch + 1, batch)]}

    recipes = recipe_manager.RecipeManager()
    recipes.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              activation_num_bits=8, weight_num_bits=8,
                              weight_granularity=qtyping.QuantGranularity.CHANNELWISE)
    if io == "float":
        for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            recipes.add_quantization_config(".*", op, algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    elif io != "int8":
        raise SystemExit(f"IO must be float or int8, not {io!r}")
    recipe = recipes.get_quantization_recipe()
    calib = calibrator.Calibrator(fp32, num_threads=2, qsv_update_func=_running_min_max)
    calib.calibrate(data, recipes)
    result = quantizer.Quantizer(fp32, recipe).quantize(calib.get_model_qsvs(), enable_progress_bar=False,
                                                         enable_progress_report=False)
    result.export_model(out, overwrite=True)


COMMANDS = {"convert": convert, "quantize": quantize}


def main(argv: list[str]) -> int:
    _refuse_network()
    import site
    site.main()    # run with -S: the environment's site-packages (and any .pth there) only from here on
    command = COMMANDS.get(argv[1] if len(argv) > 1 else "")
    if command is None:
        print(f"usage: {argv[0]} {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        return 2
    command(*argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
