"""What is exported: a ``ModelKind`` turns a model into the ``Exportable`` a format writes and says what "agrees
with PyTorch" means for it (a ``mnv4.export.verify.Comparison``). The pipeline is the same for every kind.

``Classifier`` (below) is what ``mnv4 export`` exports; ``mnv4.detection.export.Detector`` is ``mnv4 detect export``'s,
``mnv4.segmentation.export.Segmenter`` ``mnv4 segment export``'s. A new kind is one more subclass next to its model
code, passed as ``run_export(model, cfg, kind)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .format import Calibration, Exportable, ExportFormat, Runner
from .verify import INT8_MIN_AGREEMENT, INT8_MIN_SQNR_DB, Comparison, Int8Agreement, LogitError, default_tolerance


class ModelKind:
    """One kind of model. Subclasses implement ``input_size``, ``exportable`` and ``comparison``."""

    name = ""
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")

    def refuses(self, fmt: ExportFormat) -> str | None:
        """Why ``fmt`` cannot write this kind of model (asked before any work), or None."""
        return None

    def input_size(self, model: nn.Module, cfg) -> tuple[int, int]:
        raise NotImplementedError

    def exportable(self, model: nn.Module, fmt: ExportFormat, size: tuple[int, int], cfg) -> Exportable:
        raise NotImplementedError

    def calibration(self, model: nn.Module, size: tuple[int, int], cfg) -> Calibration:
        """The images an int8 file is calibrated on (only asked when ``cfg.precision`` is int8)."""
        raise UserError(f"int8 export of a {self.name} is not supported")

    def comparison(self, model: nn.Module, fmt: ExportFormat, size: tuple[int, int], cfg) -> Comparison | None:
        """How the written file is compared with ``model`` (None: nothing to compare on; the caller says so)."""
        raise NotImplementedError

    def accuracy(self, model: nn.Module, run: Runner, path: Path, size: tuple[int, int], cfg) -> list:
        """Rows for ``cfg.eval_dir`` (a labelled folder): the file's score next to PyTorch's; [] when not offered."""
        return []


class Classifier(ModelKind):
    """A ``MobileNetV4`` classifier: fp32 / fp16 files are compared with PyTorch on random inputs (every output
    within the tolerance of its scale), int8 files on real images (top-1 agreement and logit SQNR)."""

    name = "classifier"

    def input_size(self, model, cfg) -> tuple[int, int]:
        return tuple(cfg.input_size or (model.spec.resolution, model.spec.resolution))

    def exportable(self, model, fmt, size, cfg) -> Exportable:
        from .prepare import classifier_exportable

        return classifier_exportable(model, size, classifier_for=None if fmt.several_outputs else fmt.label,
                                     dynamic_hw=cfg.dynamic_hw)

    def calibration(self, model, size, cfg) -> Calibration:
        from .data import Preprocess

        return Calibration(Path(cfg.calib), Preprocess.for_model(model, size), cfg.calib_images)

    def comparison(self, model, fmt, size, cfg) -> Comparison:
        if cfg.precision == "int8":
            return Int8Agreement(
                self.check_images(model, size, cfg),
                INT8_MIN_AGREEMENT if cfg.min_agreement is None else cfg.min_agreement,
                INT8_MIN_SQNR_DB if cfg.min_sqnr_db is None else cfg.min_sqnr_db,
            )
        from .verify import random_inputs

        batches = (1, 2) if fmt.dynamic_batch else (1, 1)
        tolerance = default_tolerance(cfg.precision) if cfg.tolerance is None else cfg.tolerance
        return LogitError(random_inputs(size, batches, model.in_chans, seed=0), tolerance)

    @staticmethod
    def check_images(model: nn.Module, size: tuple[int, int], cfg) -> torch.Tensor:
        """The real images an int8 file is judged on: ``cfg.check_images`` of the ``--eval`` folder (held out) or,
        without one, of the calibration folder; preprocessed as the model's tag is evaluated. Images that cannot be
        decoded are skipped (each logged)."""
        from .data import Preprocess, calibration_images, load_batch

        folder = cfg.eval_dir or cfg.calib
        paths = calibration_images(folder, cfg.check_images, seed=1)
        x = load_batch(paths, Preprocess.for_model(model, size), skipped := [])
        if not len(x):
            raise UserError(f"none of the {len(paths)} images sampled from {folder} for the int8 check could be "
                            f"decoded (first: {skipped[0]})")
        return torch.from_numpy(x)

    def accuracy(self, model, run, path, size, cfg) -> list:
        from ..deploy import deploy
        from .data import Preprocess
        from .quantize import AccuracyReport, top1_accuracy, torch_runner

        preprocess = Preprocess.for_model(model, size)
        acc_ref, n = top1_accuracy(torch_runner(deploy(model)), cfg.eval_dir, preprocess, batch_size=16)
        acc, _ = top1_accuracy(lambda x: run(x)[0], cfg.eval_dir, preprocess)
        size_bytes = path.stat().st_size if path.is_file() else None
        return [AccuracyReport("PyTorch fp32", acc_ref, n), AccuracyReport(Path(cfg.out).name, acc, n, size_bytes)]
