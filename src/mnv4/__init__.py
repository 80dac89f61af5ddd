"""mnv4: MobileNetV4 (Qin et al., 2024) for PyTorch -- the whole family, timm-checkpoint compatible."""

from .factory import create_model, list_models
from .model import MobileNetV4
from .specs import MODEL_SPECS, ModelSpec

__version__ = "0.1.0"
__all__ = ["MODEL_SPECS", "MobileNetV4", "ModelSpec", "create_model", "list_models", "__version__"]
