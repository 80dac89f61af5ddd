"""The training input pipeline on NVIDIA DALI: decode fused with the Inception crop, flip, resize, RandAugment and
normalise in one DALI graph, on the GPU (``device="gpu"``: nvJPEG, and the hardware JPEG decoder where the GPU has
one) or on the CPU (``device="cpu"``: the same graph on DALI's CPU operators — that is how the tests run it).

Order and randomness stay mnv4's. Loader workers (a torch ``DataLoader`` over ``MicroBatchSampler``) read each
sample's file and draw all of its random parameters from the sample's own generator, seeded by
``(seed, aug_epoch, index)`` exactly as the 'gpu' pipeline does: the crop box (torchvision's Inception-crop rule,
the same boxes as ``GpuAugment``), the flip, and per RandAugment layer the op (the identity when the layer does not
apply) and its sign.
DALI receives the bytes and those parameters through ``fn.external_source`` and draws nothing itself. So:

- the sample indices of every micro-batch are the sampler's, as in the CPU pipeline: torchrun sharding, the data
  order stored in checkpoints and exact resume are unchanged;
- a sample's augmentation is a function of ``(seed, aug_epoch, index)`` only — not of the rank, the position in the
  batch, the pipeline instance or an interruption — so a resumed run gets the batches of an uninterrupted one (on the
  CPU bit for bit, tested; on the GPU up to decoder rounding, see docs/train.md).

Files: 8-bit JPEG (grey or YCbCr/RGB) and 8-bit grey/RGB PNG go to DALI as they are; every other image (CMYK,
alpha, palette, 16-bit, other formats) is decoded in the worker by the CPU pipeline's ``load_rgb`` (alpha on white,
16-bit rescaled) and handed to DALI as an uncompressed PPM, so its pixels are the CPU pipeline's. Undecodable files
follow the CPU pipeline's policy — the sample is replaced by the next decodable one, the file is logged once and
counted: workers reject empty, unrecognised and truncated files from their headers (DALI would decode a truncated JPEG
silently as grey), and a file DALI still fails on is found by decoding the in-flight batches one file at a time,
remembered, replaced, and the batches are fed again to a rebuilt pipeline.

Validation does not use DALI: it stays on the CPU evaluation path (``mnv4.transforms.eval_transform``), so the
top-1 a run reports is ``mnv4 eval``'s.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .data import (
    AUG_STREAM,
    CROP_PARAMS,
    JPEG_MAGIC,
    DecodeError,
    ImageFolderDataset,
    load_rgb,
    mix_seed,
    randaugment_magnitude,
    random_resized_crop_box,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# torchvision's RandAugment op set, in torchvision's order (the op index drawn per layer means the same op in both)
RANDAUG_OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "auto_contrast",
    "equalize",
)
RANDAUG_BINS = 11  # magnitude levels 0..10, as torchvision's RandAugment(num_magnitude_bins=11) in mnv4.train.data
TRANSLATE_FRACTION = 150 / 331  # torchvision's translate range at level 10, as a fraction of the image side
RANDAUG_FILL = 0  # torchvision fills with black (TF with 128)
# parameter row of a sample: crop box (top, left, height, width), flip, then (op, sign) per RandAugment layer, where
# a layer that does not apply (probability 1 - randaug_prob) has op 0, the identity
FLIP, RANDAUG = 4, 5
PREFETCH = 2


def require_dali():
    """The ``nvidia.dali`` module, or one clear error saying how to install it."""
    try:
        import nvidia.dali
    except ImportError:
        raise UserError(
            "data_pipeline 'dali' needs NVIDIA DALI: pip install 'mnv4[dali]' (the CUDA 12 wheel "
            "nvidia-dali-cuda120; `make dali`), or use data_pipeline 'cpu' / 'gpu'"
        ) from None
    return nvidia.dali


# --------------------------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class ImageHeader:
    height: int
    width: int
    native: bool  # DALI's decode of the bytes gives the CPU pipeline's RGB pixels; False: decode with PIL first


class _Malformed(Exception):
    """What the header parsers find wrong; ``read_header`` turns it into a ``DecodeError`` naming the file."""


def read_header(data: bytes, name: str = "<bytes>") -> ImageHeader | None:
    """Size of a JPEG or PNG from its header, after checking the file is complete; ``None`` for other formats.

    Raises ``DecodeError`` (naming ``name``) for an empty, truncated or malformed JPEG/PNG: these must not reach
    DALI, whose decoders fill a truncated JPEG with grey without an error.
    """
    try:
        if not data:
            raise _Malformed("empty file")
        if data[:2] == JPEG_MAGIC:
            return _jpeg_header(data)
        if data[:8] == PNG_MAGIC:
            return _png_header(data)
        return None
    except _Malformed as err:
        raise DecodeError(name, str(err)) from None


def _jpeg_header(data: bytes) -> ImageHeader:
    """Walk the marker segments to the first scan; the image must end with an EOI marker after it (entropy-coded
    data cannot contain one: 0xFF is byte-stuffed there, so its absence means the file was cut)."""
    pos, frame = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise _Malformed(f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame (not DHT, JPG, DAC)
            segment = data[pos + 4 : pos + 2 + length]
            if len(segment) < 6:
                raise _Malformed("corrupt JPEG: short frame header")
            precision, components = segment[0], segment[5]
            height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            frame = (height, width, precision == 8 and components in (1, 3))  # CMYK and 12-bit: through PIL
        elif marker == 0xDA:  # start of scan
            if frame is None or min(frame[:2]) == 0:
                raise _Malformed("corrupt JPEG: no frame size before the image data")
            if data.rfind(b"\xff\xd9") < pos:
                raise _Malformed("truncated JPEG (no end-of-image marker)")
            return ImageHeader(*frame)
        pos += 2 + length
    raise _Malformed("truncated JPEG (the file ends before the image data)")


def _png_header(data: bytes) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _Malformed("corrupt PNG: no IHDR chunk")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, color_type = data[24], data[25]
    if data.rfind(b"IEND") < 33:
        raise _Malformed("truncated PNG (no IEND chunk)")
    # 8-bit grey or RGB only: alpha (composited on white), palettes and 16 bits go through the CPU pipeline's to_rgb
    return ImageHeader(height, width, bit_depth == 8 and color_type in (0, 2))


# --------------------------------------------------------------------------------------------- worker side
class DaliSourceDataset(ImageFolderDataset):
    """Worker side of the DALI pipeline, indexed by ``(aug_epoch, index)`` like the CPU pipeline: returns
    ``(encoded bytes, parameter row, label, index, aug_epoch, skipped files, path)``.

    ``index`` is the sample actually returned: an undecodable file is replaced by the next decodable one, as in
    ``ImageFolderDataset``. ``known_bad`` holds the files DALI failed on (filled by the loader; workers of later
    epochs get it with the dataset).
    """

    def __init__(
        self,
        root: str | Path,
        crop_scale_min: float = 0.08,
        hflip: bool = True,
        randaug_layers: int = 0,
        randaug_prob: float = 1.0,
        seed: int = 0,
    ):
        super().__init__(root, transform=None, seed=seed)
        self.scale = (crop_scale_min, 1.0)
        self.hflip, self.randaug_layers, self.randaug_prob = hflip, randaug_layers, randaug_prob
        self.known_bad: dict[str, str] = {}

    def __getitem__(self, key):
        aug_epoch, index = key if isinstance(key, tuple) else (-1, key)
        bad: list[tuple[str, str]] = []
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            path, label = self.samples[i]
            try:
                encoded, height, width = self.encoded(path)
            except DecodeError as err:
                bad.append((path, err.reason))
                continue
            return encoded, self.augment_params(aug_epoch, i, height, width), label, i, aug_epoch, tuple(bad), path
        raise RuntimeError(f"no file under {self.root!r} could be decoded as an image")

    def encoded(self, path: str) -> tuple[np.ndarray, int, int]:
        """The bytes DALI decodes and the image size; raises ``DecodeError`` for a file that is not an image."""
        if path in self.known_bad:
            raise DecodeError(path, self.known_bad[path])
        data = Path(path).read_bytes()
        header = read_header(data, path)
        if header is not None and header.native:
            return np.frombuffer(data, dtype=np.uint8), header.height, header.width
        image = load_rgb(path)  # the CPU pipeline's conversion (raises DecodeError for what PIL cannot read)
        buffer = io.BytesIO()
        image.save(buffer, format="PPM")  # uncompressed: DALI reads these pixels back as they are
        return np.frombuffer(buffer.getvalue(), dtype=np.uint8), image.height, image.width

    def augment_params(self, aug_epoch: int, index: int, height: int, width: int) -> np.ndarray:
        """The sample's crop box, flip and RandAugment ops and signs, from its own generator. The first
        ``CROP_PARAMS`` draws are ``EncodedImageDataset``'s, so crop and flip equal the 'gpu' pipeline's."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, AUG_STREAM, aug_epoch, index))
        crop = torch.rand(CROP_PARAMS, generator=generator, dtype=torch.float64).tolist()
        row = [*random_resized_crop_box(crop, height, width, self.scale), int(self.hflip and crop[-1] < 0.5)]
        layers = torch.rand(self.randaug_layers, 3, generator=generator, dtype=torch.float64).tolist()
        for u_apply, u_op, u_sign in layers:
            op = min(int(u_op * len(RANDAUG_OPS)), len(RANDAUG_OPS) - 1) if u_apply < self.randaug_prob else 0
            row += [op, int(u_sign < 0.5)]
        return np.asarray(row, dtype=np.int32)


@dataclass
class HostBatch:
    """One micro-batch on the host: the files' bytes in one tensor (one shared-memory transfer from the worker,
    not one per file), their parameter rows, and what the training loop gets besides the images."""

    encoded: torch.Tensor  # uint8, all files concatenated
    ends: torch.Tensor  # int64, where each file ends in ``encoded``
    params: torch.Tensor  # int32 [batch, 5 + 2 * randaug_layers]
    labels: torch.Tensor
    indices: torch.Tensor
    aug_epochs: torch.Tensor
    bad: list[tuple[str, str]]  # files skipped on the way: (path, reason)
    paths: list[str]

    def files(self) -> list[np.ndarray]:
        data, ends = self.encoded.numpy(), self.ends.tolist()
        return [data[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]

    def samples(self) -> list[tuple]:
        """Per-sample tuples as ``DaliSourceDataset`` returns them (to rebuild the batch with one replaced)."""
        rows = zip(
            self.files(),
            self.params.numpy(),
            self.labels.tolist(),
            self.indices.tolist(),
            self.aug_epochs.tolist(),
            self.paths,
            strict=True,
        )
        return [(encoded, params, label, i, e, (), path) for encoded, params, label, i, e, path in rows]


def collate_sources(batch: Sequence[tuple]) -> HostBatch:
    encoded, params, labels, indices, aug_epochs, bad, paths = zip(*batch, strict=True)
    ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    return HostBatch(
        torch.from_numpy(np.concatenate(encoded)),
        torch.from_numpy(ends),
        torch.from_numpy(np.stack(params)),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(indices, dtype=torch.long),
        torch.tensor(aug_epochs, dtype=torch.long),
        [entry for entries in bad for entry in entries],
        list(paths),
    )


# --------------------------------------------------------------------------------------------- the DALI graph
@dataclass(frozen=True)
class PipelineOptions:
    """Everything the DALI graph depends on (one place, so a rebuilt pipeline is the same pipeline)."""

    device: str  # 'gpu' (decode with device='mixed') or 'cpu'
    batch_size: int  # the largest micro-batch
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    randaug_layers: int = 0
    randaug_magnitude: int = 9  # torchvision bin 0..10 (``randaugment_magnitude`` of the TF level)
    channels_last: bool = False  # output NHWC memory (handed out as an NCHW view in channels_last format)
    num_threads: int = 4
    device_id: int | None = None
    hw_decoder_load: float | None = None  # share of JPEGs for the hardware decoder (None: DALI's default)


def randaugment_suite(size: int) -> list:
    """DALI's RandAugment ops set up as torchvision's (11 bins, images of ``size`` x ``size``), in ``RANDAUG_OPS``
    order. Four depart from DALI's own suite to equal torchvision's: shear in torchvision's direction, translation by
    whole pixels of torchvision's range (it truncates), solarize at torchvision's thresholds, and sharpness leaving
    the 1-pixel border as it is (torchvision blurs the interior only)."""
    from nvidia.dali import fn, types
    from nvidia.dali.auto_aug import augmentations as aug
    from nvidia.dali.auto_aug.core import augmentation

    interior = np.zeros((size, size, 1), dtype=np.uint8)
    interior[1:-1, 1:-1] = 1

    @augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=aug.sharpness_kernel, param_device="auto")
    def sharpness(data, kernel):
        inside = types.Constant(interior, device=data.device)
        edge = types.Constant(1 - interior, device=data.device)
        return fn.filter(data, kernel) * inside + data * edge

    @augmentation
    def equalize(data, _):
        return fn.equalize(data)

    def along(axis: int, transform):
        return lambda magnitude: np.asarray([transform(magnitude), 0][:: 1 if axis == 0 else -1], dtype=np.float32)

    enhance = dict(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=aug.shift_enhance_range)
    translate = (0, TRANSLATE_FRACTION * size)
    ops = {
        "identity": aug.identity,
        "shear_x": aug.shear_x.augmentation((0, 0.3), True, along(0, lambda m: -m)),
        "shear_y": aug.shear_y.augmentation((0, 0.3), True, along(1, lambda m: -m)),
        "translate_x": aug.translate_x_no_shape.augmentation(translate, True, along(0, int)),
        "translate_y": aug.translate_y_no_shape.augmentation(translate, True, along(1, int)),
        "rotate": aug.rotate.augmentation((0, 30), True),
        "brightness": aug.brightness.augmentation(**enhance),
        "color": aug.color.augmentation(**enhance),
        "contrast": aug.contrast.augmentation(**enhance),
        "sharpness": sharpness,
        "posterize": aug.posterize.augmentation((8, 4), False, aug.poster_mask_uint8),  # bits kept: 8 - round(0.4 m)
        "solarize": aug.solarize.augmentation((255, 0), False),  # threshold 255 (1 - m / 10)
        "auto_contrast": aug.auto_contrast,
        "equalize": equalize,
    }
    return [ops[name] for name in RANDAUG_OPS]


def apply_randaugment(images, params, layers: int, magnitude: int, size: int):
    """``layers`` RandAugment steps on uint8 HWC ``images`` of ``size`` x ``size``; for layer ``k`` the parameter
    row holds (op, sign) at ``RANDAUG + 2k``. Needs a pipeline with ``enable_conditionals=True``: ``select`` splits
    the batch per sample by op."""
    from nvidia.dali import types
    from nvidia.dali.auto_aug.core import select, signed_bin

    if not layers:
        return images
    suite = randaugment_suite(size)
    for layer in range(layers):
        op, sign = params[RANDAUG + 2 * layer], params[RANDAUG + 2 * layer + 1]
        images = select(
            suite,
            op,
            images,
            magnitude_bin=signed_bin(magnitude, random_sign=sign),
            num_magnitude_bins=RANDAUG_BINS,
            fill_value=RANDAUG_FILL,
            interp_type=types.INTERP_NN,  # torchvision's RandAugment interpolation
        )
    return images


def build_pipeline(options: PipelineOptions, source):
    """The DALI training graph fed by ``source`` (a callable returning ``(list of encoded files, [batch, P]
    int32 parameter rows)`` and raising ``StopIteration`` at the end of the epoch); returns the built pipeline."""
    require_dali()
    from nvidia.dali import fn, pipeline_def, types

    o = options
    decoder_args = {"hw_decoder_load": o.hw_decoder_load} if o.hw_decoder_load is not None else {}

    @pipeline_def(enable_conditionals=o.randaug_layers > 0)
    def train_graph():
        encoded, params = fn.external_source(
            source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT32], ndim=[1, 1]
        )
        images = fn.decoders.image_slice(  # decode only the crop (ROI decoding where the decoder has it)
            encoded,
            params[0:2],
            params[2:4],
            device="mixed" if o.device == "gpu" else "cpu",
            axis_names="HW",
            normalized_anchor=False,
            normalized_shape=False,
            output_type=types.RGB,
            adjust_orientation=False,  # as the CPU pipeline's load_rgb: EXIF orientation is not applied
            jpeg_fancy_upsampling=True,  # nvJPEG upsamples chroma as libjpeg-turbo (PIL) does
            **decoder_args,
        )
        images = fn.resize(images, size=(o.size, o.size), interp_type=types.INTERP_LINEAR, antialias=True)
        images = fn.flip(images, horizontal=params[FLIP])
        images = apply_randaugment(images, params, o.randaug_layers, o.randaug_magnitude, o.size)
        return fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            mean=[255 * m for m in o.mean],
            std=[255 * s for s in o.std],
            output_layout="HWC" if o.channels_last else "CHW",
        )

    pipe = train_graph(
        batch_size=o.batch_size,
        num_threads=o.num_threads,
        device_id=o.device_id if o.device == "gpu" else None,
        prefetch_queue_depth=PREFETCH,
    )
    pipe.build()
    return pipe


def to_torch(images, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Copy a DALI output batch into a new torch tensor on ``device`` (DALI reuses its buffers), as NCHW."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    tensor = images.as_tensor()
    out = torch.empty(tensor.shape(), dtype=torch.float32, device=device)
    feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device) if device.type == "cuda" else None)
    return out.permute(0, 3, 1, 2) if channels_last else out


class DecodeProbe:
    """Finds the files DALI cannot decode among host batches: one decode per batch, then one per file of a batch
    that fails (a DALI pipeline is not usable after an error, so it is rebuilt after each failure)."""

    def __init__(self, device: str, batch_size: int, device_id: int | None):
        self.device, self.batch_size, self.device_id = device, batch_size, device_id
        self.pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def
        def decode_graph():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            device = "mixed" if self.device == "gpu" else "cpu"
            return fn.decoders.image(encoded, device=device, output_type=types.RGB, adjust_orientation=False)

        device_id = self.device_id if self.device == "gpu" else None
        pipe = decode_graph(batch_size=self.batch_size, num_threads=1, device_id=device_id, prefetch_queue_depth=1)
        pipe.build()
        return pipe

    def decodes(self, files: list[np.ndarray]) -> bool:
        self.pipe = self.pipe or self._build()
        self.pipe.feed_input("encoded", files)
        try:
            self.pipe.run()
        except RuntimeError:
            self.pipe = None
            return False
        return True

    def failures(self, batches: Sequence[HostBatch]) -> dict[str, str]:
        found = {}
        for batch in batches:
            files = batch.files()
            if self.decodes(files):
                continue
            for path, encoded in zip(batch.paths, files, strict=True):
                if not self.decodes([encoded]):
                    found[path] = f"DALI ({self.device}) could not decode it"
        return found


# --------------------------------------------------------------------------------------------- the loader
class _Feed:
    """DALI's external source: the next host batch of the current epoch — first those to feed again after a
    rebuild — kept in ``in_flight`` until its images come out (DALI reads ahead by ``PREFETCH`` batches)."""

    def __init__(self):
        self.start(iter(()))

    def start(self, batches: Iterator[HostBatch]) -> None:
        self.batches, self.exhausted = batches, False
        self.refeed: deque[HostBatch] = deque()
        self.in_flight: deque[HostBatch] = deque()

    def __call__(self):
        if self.refeed:
            batch = self.refeed.popleft()
        else:
            try:
                batch = next(self.batches)
            except StopIteration:  # tells DALI the epoch is over
                self.exhausted = True
                raise
        self.in_flight.append(batch)
        return batch.files(), batch.params.numpy()

    @property
    def done(self) -> bool:
        """DALI has seen the end of the epoch and holds no batch any more."""
        return self.exhausted and not self.in_flight and not self.refeed


@dataclass
class SkipCounter:
    """Samples replaced because their file could not be decoded, and the distinct files (path -> reason)."""

    samples: int = 0
    files: dict[str, str] = field(default_factory=dict)

    def add(self, entries: Sequence[tuple[str, str]]) -> None:
        self.samples += len(entries)
        for path, reason in entries:
            self.files.setdefault(path, reason)


class DaliTrainLoader:
    """Training batches through DALI, consumed like the CPU pipeline's ``DataLoader``: ``epoch(sampler)`` yields
    ``(images, labels, indices, aug_epochs, bad)`` per micro-batch of ``sampler`` (a ``MicroBatchSampler``), with
    ``images`` normalised float32 NCHW on ``device`` (channels_last memory when asked) and ``bad`` the
    ``(path, reason)`` of the files skipped for this batch (log them with ``BadFileLog``).

    ``device``: a CUDA device runs the graph on the GPU, ``cpu`` on DALI's CPU operators. ``workers`` loader
    processes read files and draw parameters; ``threads`` are DALI's own (CPU decode / Huffman decoding).
    """

    def __init__(
        self,
        root: str | Path,
        size: int,
        cfg,
        device: torch.device | str,
        batch_size: int,
        workers: int = 4,
        threads: int = 4,
        channels_last: bool = False,
        hw_decoder_load: float | None = None,
    ):
        require_dali()
        if cfg.mean is None or cfg.std is None:
            raise UserError("the config's mean/std are unset: resolve them first with "
                            "mnv4.train.inputs.resolve_model_defaults(cfg, model), as mnv4 train does")
        self.device = torch.device(device)
        self.dataset = DaliSourceDataset(
            root, cfg.crop_scale_min, cfg.hflip, cfg.randaug_layers, cfg.randaug_prob, seed=cfg.seed
        )
        on_gpu = self.device.type == "cuda"
        device_id = None
        if on_gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.options = PipelineOptions(
            device="gpu" if on_gpu else "cpu",
            batch_size=batch_size,
            size=size,
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            randaug_layers=cfg.randaug_layers,
            randaug_magnitude=randaugment_magnitude(cfg.randaug_magnitude),
            channels_last=channels_last,
            num_threads=threads,
            device_id=device_id,
            hw_decoder_load=hw_decoder_load,
        )
        self.workers = workers
        self.skipped = SkipCounter()
        self.feed = _Feed()
        self.pipe = None
        self.state = "new"  # 'ready' (built, unused), 'ended' (epoch drained: reset, then reuse), 'running'

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, sampler) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=self.workers, collate_fn=collate_sources
        )
        if self.state in ("new", "running"):  # a pipeline left mid-epoch still holds batches it read ahead
            self._rebuild()
        self.feed.start(iter(loader))
        if self.state == "ended":
            self.pipe.reset()
        self.state = "running"
        while True:
            try:
                (images,) = self.pipe.run()
            except StopIteration:
                self.state = "ended"
                return
            except RuntimeError as err:  # a file that passed the header checks but DALI cannot decode
                self._recover(err)
                continue
            batch = self.feed.in_flight.popleft()
            self.skipped.add(batch.bad)
            images = to_torch(images, self.device, self.options.channels_last)
            # after the last batch, take DALI's end of data now: a consumer that stops after the batches it
            # counted (the training loop) leaves a pipeline the next epoch can reuse instead of rebuilding
            last = self.feed.done and self._drain()
            yield images, batch.labels, batch.indices, batch.aug_epochs, batch.bad
            if last:
                return

    def _drain(self) -> bool:
        try:
            self.pipe.run()
        except StopIteration:
            self.state = "ended"
            return True
        return False

    def _rebuild(self) -> None:
        self.pipe = None  # release the old pipeline's buffers first
        self.pipe = build_pipeline(self.options, self.feed)
        self.state = "ready"

    def _recover(self, err: RuntimeError) -> None:
        """Find the undecodable files among the batches DALI holds, replace each like the CPU pipeline does (the
        next decodable sample), and feed the batches again to a new pipeline. No such file: ``err`` was not about
        the data, and it is raised as it is."""
        feed = self.feed
        suspects = list(feed.in_flight)
        o = self.options
        found = DecodeProbe(o.device, o.batch_size, o.device_id).failures(suspects)
        if not found:
            raise err
        self.dataset.known_bad.update(found)
        feed.refeed.extendleft(reversed([self._replace(batch, found) for batch in suspects]))
        feed.in_flight.clear()
        self._rebuild()
        self.state = "running"

    def _replace(self, batch: HostBatch, found: dict[str, str]) -> HostBatch:
        if not any(path in found for path in batch.paths):
            return batch
        samples, bad = [], list(batch.bad)
        for sample in batch.samples():
            path, index, aug_epoch = sample[-1], sample[3], sample[4]
            if path in found:
                bad.append((path, found[path]))
                sample = self.dataset[(aug_epoch, (index + 1) % len(self.dataset))]
                bad.extend(sample[5])
            samples.append(sample)
        replaced = collate_sources(samples)
        replaced.bad = bad
        return replaced


__all__ = [
    "DaliSourceDataset",
    "DaliTrainLoader",
    "DecodeProbe",
    "PipelineOptions",
    "RANDAUG_OPS",
    "apply_randaugment",
    "build_pipeline",
    "read_header",
    "require_dali",
]
