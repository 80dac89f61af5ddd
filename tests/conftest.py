import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def timm():
    return pytest.importorskip("timm", reason="timm (the parity reference) is not installed; pip install -e '.[dev]'")
