import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def timm():
    return pytest.importorskip("timm", reason="timm (the parity reference) is not installed; pip install -e '.[dev]'")


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory):
    """100 training / 50 validation digits (32 px): enough for the short training runs (``digits.small_config``)."""
    pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn (dev extra)")
    from digits import copy_subset, write_digits_imagefolder

    full = write_digits_imagefolder(tmp_path_factory.mktemp("digits_full"), size=32)
    return copy_subset(full, tmp_path_factory.mktemp("digits_tiny"), {"train": 10, "val": 5})
