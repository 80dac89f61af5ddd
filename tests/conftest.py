import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def timm():
    return pytest.importorskip("timm", reason="timm (the parity reference) is not installed; pip install -e '.[dev]'")


@pytest.fixture(scope="session")
def all_digits(tmp_path_factory):
    """scikit-learn's 1,797 digits as a 32 px ImageFolder: 1,438 training, 359 validation images."""
    pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn (dev extra)")
    from digits import write_digits_imagefolder

    return write_digits_imagefolder(tmp_path_factory.mktemp("digits_full"), size=32)


@pytest.fixture(scope="session")
def tiny_digits(all_digits, tmp_path_factory):
    """100 training / 50 validation digits (32 px): enough for the short training runs (``digits.small_config``)."""
    from digits import copy_subset

    return copy_subset(all_digits, tmp_path_factory.mktemp("digits_tiny"), {"train": 10, "val": 5})
