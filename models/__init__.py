"""BSConv layers, the MobileNet zoo, checkpoints and profiling."""
from .errors import BSConvExportError, CheckpointError, StageError, UnknownModelError, UserInputError
from .layers import BSConvS, BSConvU
from .registry import InputSpec, create_model, get_entry, list_models, register_model

__all__ = [
    "BSConvExportError", "BSConvS", "BSConvU", "CheckpointError", "InputSpec", "StageError",
    "UnknownModelError", "UserInputError", "create_model", "get_entry", "list_models", "register_model",
]
