import pytest
import torch

from bsconv_export.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint


@pytest.fixture(scope="session")
def shipped():
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
