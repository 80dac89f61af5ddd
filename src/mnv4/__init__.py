"""mnv4: MobileNetV4 (Qin et al., 2024) for PyTorch -- the whole family, timm-checkpoint compatible."""

from .factory import create_model, list_models
from .imagenet import imagenet_classes
from .images import load_image
from .model import MobileNetV4
from .specs import MODEL_SPECS, ModelSpec
from .synthetic import synthetic_segmentation, synthetic_shapes
from .transforms import DataConfig, data_config, eval_transform
from .weights import list_pretrained

__version__ = "0.1.0"
__all__ = [
    "MODEL_SPECS",
    "DataConfig",
    "MobileNetV4",
    "ModelSpec",
    "__version__",
    "create_model",
    "data_config",
    "eval_transform",
    "imagenet_classes",
    "list_models",
    "list_pretrained",
    "load_image",
    "synthetic_segmentation",
    "synthetic_shapes",
]
