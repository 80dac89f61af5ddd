"""Exporters for deployed MobileNetV4 models: ONNX, LiteRT (TFLite), Core ML, and int8 post-training quantization.

Each format lives in its own module and imports its optional toolkit lazily, so ``import mnv4.export`` is cheap and a
missing toolkit gives one line naming the ``pip install`` command (``MissingExtraError``):

- ``mnv4.export.onnx``: ``export_onnx`` / ``verify_onnx`` (extra ``onnx``);
- ``mnv4.export.litert``: ``export_litert`` / ``verify_litert`` (extra ``tflite``);
- ``mnv4.export.coreml``: ``export_coreml`` / ``inspect_coreml`` / ``verify_coreml`` (extra ``coreml``);
- ``mnv4.export.quantize``: ONNX Runtime QDQ static int8 (``quantize_onnx``) and LiteRT int8 (``export_litert_int8``);
- ``mnv4.export.data``: calibration / evaluation images from a folder.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "onnxslim": "onnx",
          "litert_torch": "tflite", "ai_edge_litert": "tflite", "coremltools": "coreml"}


class MissingExtraError(RuntimeError):
    """An optional toolkit is not installed; the message names the pip command."""


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise ``MissingExtraError`` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module.split(".")[0], "onnx")
        raise MissingExtraError(
            f"{module} is not installed ({err}); install it with: pip install 'mnv4[{extra}]'"
        ) from None


__all__ = ["EXTRAS", "MissingExtraError", "require"]
