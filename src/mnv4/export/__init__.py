"""Exporters for deployed MobileNetV4 models: ONNX, LiteRT (TFLite), Core ML, ExecuTorch, AOTInductor, and int8
(post-training quantization, and quantization-aware training for ExecuTorch / ONNX Runtime).

Each format lives in its own module and imports its optional toolkit lazily, so ``import mnv4.export`` is cheap and a
missing toolkit gives one line naming the ``pip install`` command (``MissingExtraError``):

- ``mnv4.export.onnx``: ``export_onnx`` / ``verify_onnx`` (extra ``onnx``);
- ``mnv4.export.litert``: ``export_litert`` / ``verify_litert`` (extra ``tflite``);
- ``mnv4.export.coreml``: ``export_coreml`` / ``inspect_coreml`` / ``verify_coreml`` (extra ``coreml``);
- ``mnv4.export.executorch``: ``export_executorch`` / ``ExecuTorchRunner`` / ``verify_executorch`` (extra
  ``executorch``);
- ``mnv4.export.aoti``: ``export_aoti`` / ``AOTIRunner`` / ``verify_aoti`` (AOTInductor; needs a C++ compiler);
- ``mnv4.export.quantize``: post-training int8: ONNX Runtime QDQ (``quantize_onnx``), LiteRT
  (``export_litert_int8``), ExecuTorch (``export_executorch_int8``);
- ``mnv4.export.qat``: quantization-aware training with the ExecuTorch quantizer (``mnv4 train --qat``);
- ``mnv4.export.verify``: the checks (fp32: relative error; int8: top-1 agreement and SQNR);
- ``mnv4.export.format`` / ``mnv4.export.registry``: one ``ExportFormat`` object per format (suffix, precisions,
  writer, runner), listed in ``FORMATS``; ``mnv4.export.kind``: what is exported (a classifier; detectors in
  ``mnv4.detection.export``) and how the file is compared with PyTorch;
- ``mnv4.export.pipeline``: ``ExportConfig`` / ``run_export``, what ``mnv4 export`` and ``mnv4 detect export`` run
  (write, check, move into place);
- ``mnv4.export.data``: calibration / evaluation images from a folder.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UserError

EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "onnxslim": "onnx",
          "litert_torch": "tflite", "ai_edge_litert": "tflite", "ai_edge_quantizer": "tflite",
          "coremltools": "coreml", "executorch": "executorch", "torchao": "executorch"}

class MissingExtraError(UserError):
    """An optional toolkit is not installed; the message names the pip command (a user-fixable error)."""


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise ``MissingExtraError`` naming the extra that provides it."""
    extra = EXTRAS.get(module.split(".")[0], "onnx")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{module} is not installed ({err}); install it with: pip install 'mnv4[{extra}]'"
        ) from None
    except OSError as err:  # installed but broken: a shared library that does not load
        raise MissingExtraError(
            f"{module} is installed but does not load ({err}); reinstall it: "
            f"pip install --force-reinstall 'mnv4[{extra}]'"
        ) from None


__all__ = ["EXTRAS", "MissingExtraError", "require"]
