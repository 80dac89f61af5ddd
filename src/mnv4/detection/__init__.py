"""MobileNetV4 for object detection, on torchvision's detection models (docs/detection.md).

- Backbones: ``mobilenetv4_backbone`` (an ``OrderedDict`` of feature maps + ``out_channels``, any variant and tag,
  frozen BN / trainable stages, ``features_only`` or torch.fx ``create_feature_extractor``), and
  ``mobilenetv4_fpn_backbone`` (+ torchvision's FPN, or the paper's depthwise-separable one).
- Detectors: ``retinanet_mobilenetv4`` (the MobileNetV4 paper's RetinaNet, §7.2 / Tab. 7) and
  ``ssdlite_mobilenetv4`` (torchvision's SSDLite design); ``DetectorSpec`` + ``create_detector``,
  ``save_detector`` / ``load_detector``.
- Data and metrics: ``load_coco`` (checked COCO instances JSON + image folder), ``evaluate_detector`` (pycocotools'
  COCOeval), ``train_detector`` with ``DetectConfig`` / recipes, ``detect`` (+ ``write_predictions``),
  ``export_detector_onnx`` / ``verify_detector_onnx``.

Command line: ``mnv4 detect train | eval | predict | export | models``.
"""

from .backbone import FrozenBatchNormAct2d, MobileNetV4Backbone, freeze_batchnorm, mobilenetv4_backbone
from .coco import CocoData, CocoDetectionDataset, load_coco
from .config import DetectConfig, list_detect_recipes, load_detect_config
from .evaluate import CocoMetrics, coco_evaluate, evaluate_detector
from .export import export_detector_onnx, verify_detector_onnx
from .models import (
    DetectorSpec,
    FPNBackbone,
    create_detector,
    fpn_on,
    load_detector,
    mobilenetv4_fpn_backbone,
    retinanet_mobilenetv4,
    retinanet_on,
    save_detector,
    ssdlite_mobilenetv4,
)
from .predict import Detections, detect, write_predictions
from .train import DetectTrainResult, train_detector

__all__ = [
    "CocoData",
    "CocoDetectionDataset",
    "CocoMetrics",
    "DetectConfig",
    "DetectTrainResult",
    "Detections",
    "DetectorSpec",
    "FrozenBatchNormAct2d",
    "MobileNetV4Backbone",
    "FPNBackbone",
    "coco_evaluate",
    "create_detector",
    "detect",
    "evaluate_detector",
    "export_detector_onnx",
    "fpn_on",
    "freeze_batchnorm",
    "list_detect_recipes",
    "load_coco",
    "load_detect_config",
    "load_detector",
    "mobilenetv4_backbone",
    "mobilenetv4_fpn_backbone",
    "retinanet_mobilenetv4",
    "retinanet_on",
    "save_detector",
    "ssdlite_mobilenetv4",
    "train_detector",
    "verify_detector_onnx",
    "write_predictions",
]
