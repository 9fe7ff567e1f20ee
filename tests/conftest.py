import os

import pytest
import torch

from bsconv_export.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint


# `make test` runs the suite in one worker per core (pytest-xdist). Each worker then keeps to one
# torch thread and one non-spinning onnxruntime thread: two workers that each spin two threads on
# two cores wait on descheduled threads at every parallel op and slow down many-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import onnxruntime

    torch.set_num_threads(1)
    _SessionOptions = onnxruntime.SessionOptions

    def _one_thread_options():
        so = _SessionOptions()
        so.intra_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    onnxruntime.SessionOptions = _one_thread_options


@pytest.fixture(scope="session")
def shipped():
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
