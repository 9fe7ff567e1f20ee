"""In-process plugins for tests/contract/test_plugins.py, found through a test entry point (``toy_plugins:NAME``)."""
from bsconv_export.exporter.formats import Format, Plugin, preferred
from bsconv_export.exporter.kit.options import Option
from bsconv_export.exporter.kit.tolerances import Precision, Tolerance
from bsconv_export.exporter.kit.records import ArtifactRecord, Status
from bsconv_export.exporter.runners import Runner


def export_copy(ctx):
    """The best ONNX file, under another name."""
    import shutil
    source = preferred(ctx.records.values(), "onnx")
    shutil.copyfile(ctx.workdir / source.path, ctx.workdir / "model.squash")
    return ArtifactRecord(format="squash", status=Status.OK, path="model.squash")


def export_orphan(ctx):
    (ctx.workdir / "model.orphan").write_bytes(b"nothing loads this")
    return ArtifactRecord(format="orphan", status=Status.OK, path="model.orphan")


class SquashRunner(Runner):
    """Runs the ONNX copy but returns 3 of the 10 logits: it breaks the output contract."""
    name = "squash-runner"
    kinds = ("squash",)

    def load(self):
        import onnxruntime as ort
        self.session = ort.InferenceSession(self.path.read_bytes(), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.fixed_batch = self.input_shape[0]
        return self

    def infer(self, inputs):
        (y,) = self.session.run(None, inputs)
        return {"logits": y[:, :3]}


SQUASH = Plugin(name="squash", formats=(Format("squash", export_copy, "model.squash", "squash", "breaks the contract",
                                               requires=("onnx",)),), runners=(SquashRunner,))
ORPHAN = Plugin(name="orphan", formats=(Format("orphan", export_orphan, "model.orphan", "nobody-loads-this",
                                               "no runner loads it"),))
CLASH = Plugin(name="clash", formats=(Format("onnx", export_orphan, "model.clash", "onnx", "reuses a built-in name"),))
NOT_A_PLUGIN = object()


def export_escape(ctx):
    (ctx.workdir / "model.escape").write_bytes(b"escape")
    return ArtifactRecord(format="escape", status=Status.OK, path="../escaped.txt", side_files=["../../etc/x"])


#: a row whose file leaves the bundle: left out at discovery
BAD_NAME = Plugin(name="badname", formats=(Format("badname", export_orphan, "../x", "nobody-loads-this", "x"),))
#: a stage whose record names a file outside the bundle: a failed record, never hashed or written
ESCAPE = Plugin(name="escape", formats=(Format("escape", export_escape, "model.escape", "nobody-loads-this", "x"),))
#: registers a built-in's name and comes first by its order: the built-in must still win
EARLY_CLASH = Plugin(name="aaa-early", order=0,
                     formats=(Format("onnx", export_orphan, "model.early", "onnx", "would displace the built-in"),))
#: an option whose flag is a command's own
OUT_FLAG = Plugin(name="outflag", options=(Option("toy_out", "--out", str, None, "takes export's --out"),),
                  formats=(Format("outflag", export_orphan, "model.outflag", "nobody-loads-this", "x",
                                  options=("toy_out",)),))


def export_palette(ctx):
    import shutil
    source = preferred(ctx.records.values(), "onnx")
    shutil.copyfile(ctx.workdir / source.path, ctx.workdir / "model.palette")
    return ArtifactRecord(format="palette", status=Status.OK, path="model.palette")


class PaletteRunner(SquashRunner):
    """The ONNX file under another name, run whole (the precision's gate is under test, not the file)."""
    name = "palette-onnxruntime"
    kinds = ("palette",)

    def infer(self, inputs):
        return {"logits": self.session.run(["logits"], {"input": inputs["input"]})[0]}


#: a precision of its own with its own gate, declared by the plugin (no edit of the core)
PALETTE = Plugin(name="palette",
                 precisions=(Precision("toy-lut-6bit", Tolerance(min_top1_agreement=0.5, max_accuracy_drop=0.5),
                                       strictness=1),),
                 formats=(Format("palette", export_palette, "model.palette", "palette", "a palettized file",
                                 precision="toy-lut-6bit", requires=("onnx",)),), runners=(PaletteRunner,))
#: names a precision nobody declares: left out
UNDECLARED = Plugin(name="undeclared", formats=(Format("undeclared", export_orphan, "model.undeclared", "x", "x",
                                                       precision="toy-lut-2bit"),))
