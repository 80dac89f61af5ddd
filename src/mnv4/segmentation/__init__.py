"""Semantic segmentation with MobileNetV4 backbones, on torchvision's segmentation models (docs/segmentation.md).

- Backbones: any variant at output stride 32 / 16 / 8 (``mnv4.create_model(..., output_stride=16)``), and TF Model
  Garden's ``mobilenetv4_conv_medium_seg``; ``mobilenetv4_features`` names the maps as torchvision's heads read them.
- Segmenters: ``lraspp_mobilenetv4`` (torchvision's LR-ASPP) and ``deeplabv3_mobilenetv4`` (torchvision's DeepLabV3,
  optional FCN aux head); ``SegmenterSpec`` + ``create_segmenter``, ``save_segmenter`` / ``load_segmenter``.
- Data: ``load_mask_folder`` (images + PNG label masks, VOC-style, 255 = ignore), ``load_coco_masks`` (COCO instances
  JSON -> semantic masks), ``SegmentationDataset`` with ``train_transform`` / ``EvalTransform``.
- Training: ``SegmentConfig`` (recipes in ``mnv4/recipes/segmentation``, ``load_segment_config``) and
  ``train_segmenter`` on the shared run engine (``mnv4.engine``), with ``segmentation_loss``; metrics from one
  ``ConfusionMatrix`` (mIoU, per-class IoU, pixel accuracy); ``evaluate_segmenter``; ``segment`` +
  ``write_predictions`` (raw masks and coloured overlays); ``segmenter_table`` (params and MACs next to
  torchvision's MobileNetV3 segmenters). The command line: ``mnv4 segment`` (``python -m mnv4.segmentation``).
"""

from .config import SegmentConfig, list_segment_recipes, load_segment_config, load_segment_recipe
from .data import (
    IGNORE_INDEX,
    CocoMasks,
    EvalTransform,
    MaskFolder,
    SegmentationDataset,
    collate_segmentation,
    load_coco_masks,
    load_mask_folder,
    read_mask,
    train_transform,
)
from .evaluate import confusion_over, evaluate_segmenter
from .loss import segmentation_loss
from .metrics import ConfusionMatrix, SegmentationMetrics
from .models import (
    MobileNetV4Features,
    SegmenterSpec,
    create_segmenter,
    deeplabv3_mobilenetv4,
    load_segmenter,
    lraspp_mobilenetv4,
    mobilenetv4_features,
    save_segmenter,
    segmenter_spec,
    voc_palette,
)
from .predict import Segmentation, class_maps, mask_image, overlay, segment, write_predictions
from .train import SegmentationTask, SegmentTrainResult, train_segmenter

__all__ = [
    "IGNORE_INDEX",
    "CocoMasks",
    "ConfusionMatrix",
    "EvalTransform",
    "MaskFolder",
    "MobileNetV4Features",
    "SegmentConfig",
    "SegmentTrainResult",
    "SegmentationDataset",
    "SegmentationTask",
    "Segmentation",
    "SegmentationMetrics",
    "SegmenterSpec",
    "class_maps",
    "collate_segmentation",
    "confusion_over",
    "create_segmenter",
    "deeplabv3_mobilenetv4",
    "evaluate_segmenter",
    "load_coco_masks",
    "list_segment_recipes",
    "load_mask_folder",
    "load_segment_config",
    "load_segment_recipe",
    "load_segmenter",
    "lraspp_mobilenetv4",
    "mask_image",
    "mobilenetv4_features",
    "overlay",
    "read_mask",
    "save_segmenter",
    "segment",
    "segmentation_loss",
    "segmenter_spec",
    "train_segmenter",
    "train_transform",
    "voc_palette",
    "write_predictions",
]
