"""Image files: which files are images, how a folder of them is laid out and labelled, and how one file is decoded.

Every path that reads images goes through this module: ``mnv4 predict``, ``mnv4 eval``, training, and export's
calibration and ``--eval``. So one folder means the same images with the same labels everywhere, and one file
decodes to the same pixels.

Layouts (``scan_images``):
- ImageFolder: ``root/<class>/<image>``. The classes are the sorted names of root's sub-folders. Hidden folders and
  files (names starting with ".", e.g. ``.ipynb_checkpoints`` or macOS ``._x.jpg``) are ignored. An empty class
  folder is still a class, so class numbers follow the folder names and not what happens to be in them. Images at any
  depth below a class folder belong to it; image files directly in ``root`` are then ignored.
- flat: images directly in ``root`` and no sub-folder with images. Unlabelled (calibration), or labelled by a label
  file with one ``filename label`` line per image (the ImageNet val layout, ``read_label_file``).

Class folder -> model output (``class_indices``): one rule, decided here, that never renumbers silently. For a
1000-class model, folders named by ImageNet-1k synsets (``n01440764`` ...) get their ImageNet indices, also when only
some of the 1000 are there. Otherwise the sorted folders are the model's own outputs 0..k-1, the way ``mnv4 train``
numbers them, but only when there are as many folders as outputs. Every other case is refused with an error that
says what to do.

Decoding (``load_image`` -> ``to_rgb``): any file PIL reads becomes upright 8-bit RGB. A file that cannot be used
(missing, corrupt, truncated, not an image, over PIL's decompression-bomb limit) raises ``DecodeError``, a
``UserError`` that names the file. Callers that go through many files catch it, skip the file and count it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError
from .imagenet import NUM_IMAGENET_CLASSES, imagenet_synset_index

# What PIL decodes and image datasets use. torchvision's ImageFolder list plus .jfif (JPEG), .gif (first frame)
# and .pbm (bilevel).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp",
                    ".gif")


class DecodeError(UserError):
    """An image file that cannot be used. ``str(err)`` is ``"<path>: <reason>"``, and ``err.path`` / ``err.reason``
    hold the two parts."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path, self.reason = os.fspath(path), reason

    def __reduce__(self):  # crosses from DataLoader workers to the main process intact
        return type(self), (self.path, self.reason)


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a file name is an image's (by extension; hidden files, starting with ".", never are)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------------- decoding
def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, upright.

    - EXIF orientation is applied (a phone photo stored sideways is read the way it is shown). timm's loader does
      not do this, so mnv4 and timm differ on such files.
    - Transparency is composited on white: a transparent background reads as paper, not as black.
    - Greyscale, CMYK, palette and bilevel images convert as PIL converts them.
    - 16- and 32-bit integer images (``I;16``, ``I``) are taken as 16-bit and divided by 257, so 65535 -> 255.
      PIL's own conversion would clip everything above 255 to white.
    - Float images (``F``) are taken as intensities in [0, 1], as torchvision's ``ToTensor`` takes float pixels;
      values outside are clipped and NaN reads as 0.
    The scale depends only on the pixel format, never on the image's own values: one image's pixel values mean the
    same as another's.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):
        values = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0) * 255.0
        img = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to upright 8-bit RGB (``to_rgb``), or raise ``DecodeError`` saying why it cannot be."""
    try:
        with Image.open(path) as img:
            img.load()  # the full decode: a truncated file fails here, not later in a transform
            return to_rgb(img)
    except FileNotFoundError:
        raise DecodeError(path, "no such file") from None
    except IsADirectoryError:
        raise DecodeError(path, "is a folder, not an image file") from None
    except Image.DecompressionBombError as err:
        raise DecodeError(path, f"too large to decode safely ({err}); downscale the image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise DecodeError(path, f"not a readable image ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class ImageSet:
    """The images of a folder and their labels, as laid out on disk (``scan_images``)."""

    paths: list[Path]
    labels: list[int]  # ImageFolder: index into ``classes``; label file: its class index; flat: -1
    classes: list[str]  # ImageFolder: the sorted class-folder names; empty otherwise
    root: Path | None = None
    label_file: Path | None = None
    ignored: list[str] = field(default_factory=list)  # what the scan left out and why (for the caller to show)

    @property
    def labelled(self) -> bool:
        return bool(self.classes) or self.label_file is not None

    def __len__(self) -> int:
        return len(self.paths)

    def targets(self, num_classes: int, class_names: Sequence[str] | None = None) -> list[int]:
        """Each image's label as an output index of a ``num_classes``-way model (the rule of ``class_indices``)."""
        if self.classes:
            index = class_indices(self.classes, num_classes, class_names, where=str(self.root))
            return [index[label] for label in self.labels]
        if self.label_file is None:
            raise UserError(
                f"{self.root} is a flat folder of images without labels; accuracy needs class sub-folders "
                f"({self.root}/<class>/<image>) or a label file with one 'filename label' line per image"
            )
        top = max(self.labels)
        if top >= num_classes:
            raise UserError(f"{self.label_file} has class index {top}, out of range for a {num_classes}-class model")
        return list(self.labels)


def _images_under(folder: Path) -> list[Path]:
    found = (p for p in folder.rglob("*") if is_image_file(p) and p.is_file())
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan_images(root: str | os.PathLike, label_file: str | os.PathLike | None = None) -> ImageSet:
    """The images under ``root``: an ImageFolder, a flat folder, or with ``label_file`` the ImageNet val layout
    (see the module doc). A folder without images, a missing folder or a bad label file raises one UserError."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {str(root)!r} " + ("is a file" if root.exists() else "does not exist"))
    if label_file is not None:
        return _scan_label_file(root, Path(label_file))
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [_images_under(d) for d in class_dirs]
    if any(per_class):
        paths = [p for images in per_class for p in images]
        labels = [label for label, images in enumerate(per_class) for _ in images]
        loose = [p.name for p in root.iterdir() if is_image_file(p) and p.is_file()]
        ignored = [f"{len(loose)} image(s) directly in {root} (not in a class folder)"] if loose else []
        return ImageSet(paths, labels, [d.name for d in class_dirs], root, ignored=ignored)
    flat = sorted(p for p in root.iterdir() if is_image_file(p) and p.is_file())
    if flat:
        return ImageSet(flat, [-1] * len(flat), [], root)
    where = f"in {root} or its class folders ({_few(d.name for d in class_dirs)})" if class_dirs else f"in {root}"
    raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) {where}")


def scan_image_folder(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """An ImageFolder root for training: sorted ``[(path, class number)]`` and the sorted class names, classes
    numbered 0..k-1 in name order (a new head's own classes). A flat folder raises a UserError."""
    images = scan_images(root)
    if not images.classes:
        raise UserError(f"{root} has no class sub-folders; expected {root}/<class>/<image>.jpg")
    return [(str(p), label) for p, label in zip(images.paths, images.labels, strict=True)], images.classes


def read_label_file(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``[(filename, class_index), ...]`` from a ``filename label`` text file (whitespace or a comma between them,
    0-based class index; blank lines and lines starting with ``#`` are skipped). Bad lines raise one UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"label file {str(path)!r} " + ("is a folder" if path.is_dir() else "does not exist"))
    samples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise UserError(f"{path}:{n}: expected 'filename label' with a 0-based class index, got {line[:80]!r}")
        samples.append((parts[0], int(parts[1])))
    if not samples:
        raise UserError(f"label file {path} lists no images")
    return samples


def _scan_label_file(root: Path, label_file: Path) -> ImageSet:
    samples = read_label_file(label_file)
    missing = [name for name, _ in samples if not (root / name).is_file()]
    if missing:
        raise UserError(f"{len(missing)} file(s) named in {label_file} are not in {root}: {_few(missing)}")
    return ImageSet([root / name for name, _ in samples], [label for _, label in samples], [], root, label_file)


# ---------------------------------------------------------------------------------------------------- labels
def class_indices(
    folders: Sequence[str], num_classes: int, class_names: Sequence[str] | None = None, where: str = "the data"
) -> list[int]:
    """The output of a ``num_classes``-way model that each class folder stands for.

    1. ``class_names`` given (the model's classes in output order, e.g. the file ``predict --labels`` reads): each
       folder is looked up there by name.
    2. A 1000-class model, and every folder an ImageNet-1k synset (``n01440764`` ...): the synset's ImageNet index,
       for any subset of the 1000. Ten synset folders are not renumbered 0..9.
    3. Exactly as many folders as the model has outputs: the sorted folders are outputs 0..k-1, the model's own
       classes numbered as ``mnv4 train`` numbers them (a 10-class digits model with folders 0..9; a 1000-class
       model of your own; also synset folders of a model fine-tuned on them, such as a 10-class Imagenette model).
    Anything else is ambiguous and raises a UserError instead of guessing: fewer folders than outputs that are not
    all synsets of a 1000-class model (a mix of synsets and other names included), or more folders than outputs.
    """
    if class_names is not None:
        if len(class_names) != num_classes:
            raise UserError(f"{len(class_names)} class names for a {num_classes}-class model")
        position = {name: i for i, name in enumerate(class_names)}
        unknown = [f for f in folders if f not in position]
        if unknown:
            raise UserError(f"class folder(s) of {where} not among the model's {num_classes} class names: "
                            f"{_few(unknown)}")
        return [position[f] for f in folders]
    synset_index = imagenet_synset_index()
    synsets = [f for f in folders if f in synset_index]
    if num_classes == NUM_IMAGENET_CLASSES and synsets and len(synsets) == len(folders):
        return [synset_index[f] for f in folders]
    if len(folders) == num_classes:
        return list(range(num_classes))
    if len(folders) > num_classes:
        raise UserError(f"{where} has {len(folders)} class folders ({_few(folders)}) but the model has {num_classes} "
                        "outputs")
    if num_classes == NUM_IMAGENET_CLASSES and synsets:
        others = [f for f in folders if f not in synset_index]
        raise UserError(
            f"{where} mixes ImageNet synset folders ({_few(synsets)}) with other names ({_few(others)}), and there "
            f"are fewer than 1000: which ImageNet class the others are is unknown. Rename or remove them"
        )
    hint = " or name the folders by ImageNet synset (n01440764, ...)" if num_classes == NUM_IMAGENET_CLASSES else ""
    raise UserError(
        f"{where} has {len(folders)} class folders ({_few(folders)}) but the model has {num_classes} outputs: which "
        f"output each folder is cannot be told from the names. Give the model's class names in output order "
        f"(eval --classes FILE){hint}, or evaluate on all {num_classes} class folders"
    )


def _few(names, shown: int = 3) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
