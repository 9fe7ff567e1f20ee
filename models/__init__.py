"""BSConv layers, the model zoo, checkpoints, model sources and training (errors, safe I/O and limits are
the shared kernel's: :mod:`bsconv_export.kernel`)."""
from ..kernel.errors import BSConvExportError, CheckpointError, StageError, UnknownModelError, UserInputError
from .layers import BSConvS, BSConvU
from .registry import InputSpec, create_model, get_entry, list_models, register_model
from . import mobilenet, resnet  # noqa: F401,E402 - importing the families registers the zoo's builders

__all__ = [
    "BSConvExportError", "BSConvS", "BSConvU", "CheckpointError", "InputSpec", "StageError",
    "UnknownModelError", "UserInputError", "create_model", "get_entry", "list_models", "register_model",
]
