"""Framework-free parts of prediction: reading images, class names, top-k, exported files.

``predict.py`` (the dynamic model), ``tools/export_model.py`` and
``deploy/inference_python/infer.py`` (the exported program) share them, so the three print the
same thing for the same image.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass

import numpy as np

from swa_recipe.arch import normalization
from swa_recipe.checkpoint import CheckpointError
from swa_recipe.config import MAX_CLASSES, ConfigError, default_config, load_yaml, validate
from swa_recipe.data import regular
from swa_recipe.data.cifar import DataError, load_cifar, normalize
from swa_recipe.data.datasets import DATASETS
from swa_recipe.numbers import NumberError, to_int

IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# What tools/export_model.py writes into --save_dir; the framework is known by its files.
PREFIX = "inference"
EXPORTED = {"paddle": (f"{PREFIX}.pdiparams",), "torch": (f"{PREFIX}.pt2",)}
CONFIG_FILE = "config.yaml"


@dataclass
class Inputs:
    """A batch to classify: uint8 N x 3 x 32 x 32 images, their names, true labels if known."""

    names: list[str]
    images: np.ndarray
    labels: list[int | None] | None = None


def class_names(cfg: dict) -> list[str]:
    """Names of the config's classes, in label order (a validated config's ``num_classes`` is
    its dataset's)."""
    return list(DATASETS[cfg["Data"]["dataset"]].class_names)


def export_config(cfg: dict) -> dict:
    """The config a model is built with for export: framework convolutions.

    ``swa_paddle.onednn.Conv2D`` runs each convolution as a small static program of its own;
    an exported program must hold ordinary operators that any Paddle Inference build runs.
    """
    out = copy.deepcopy(cfg)
    out["Global"]["onednn"] = False
    return out


# What --img_path decodes: the formats a CIFAR-sized image comes in. Anything else (PSD, EPS
# through Ghostscript, ICNS, TGA, ...) is refused before its decoder runs.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
# A limit far below PIL's own (89 M pixels): inputs are resized to 32 x 32, and a 688 KB PNG
# of 13300 x 13300 would otherwise decode to 1.6 GB.
MAX_IMAGE_PIXELS = 4096 * 4096
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def open_image_file(path: str):
    """``regular.open_regular`` for an image, with this module's one-line errors."""
    try:
        return regular.open_regular(path)
    except regular.NotRegularFile:
        raise DataError(f"image {path} is not a regular file (a FIFO, a device "
                        f"or a socket); pass a PNG or JPEG file to --img_path") from None
    except OSError as exc:
        raise DataError(f"image {path} cannot be opened ({exc.strerror or exc}); "
                        f"pass an existing PNG or JPEG file to --img_path") from None


def as_rgb(img):
    """``img`` as 8-bit RGB without clipping or losing colours: 16-bit grey (which PIL's
    ``convert`` clips to white) scaled down by 257, palette images through RGBA (their
    transparency would make PIL warn), alpha dropped."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        grey = ((grey + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")  # 2-D uint8: mode L
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_image(fh, path: str) -> np.ndarray:
    """The opened file decoded as uint8 32 x 32 x 3, refused in the header when the format is
    not allowed or the image holds more than ``MAX_IMAGE_PIXELS``."""
    from PIL import Image

    with Image.open(fh, formats=IMAGE_FORMATS) as img:
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(f"{path} is {width} x {height} pixels, more than "
                            f"{MAX_IMAGE_PIXELS} (4096 x 4096); pass a smaller image (inputs "
                            f"are resized to {IMAGE_SIZE} x {IMAGE_SIZE})")
        rgb = as_rgb(img)
        if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
            rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def read_image(path: str) -> np.ndarray:
    """An image file as uint8 3 x 32 x 32 RGB; another size is resized (bilinear, no crop).
    Any decoder failure (PIL raises OSError, SyntaxError, NotImplementedError, MemoryError,
    DecompressionBombError, struct errors, ... for crafted files) is one line, and PIL's
    warnings are not printed."""
    if not os.path.exists(path):
        raise DataError(f"image {path} not found; pass an existing PNG or JPEG "
                        f"file to --img_path")
    with open_image_file(path) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            array = decode_image(fh, path)
        except DataError:
            raise
        except Exception as exc:  # every decoder error of an untrusted file, MemoryError too
            raise DataError(f"{path} cannot be read as an image "
                            f"({exc.__class__.__name__}); it is truncated or not a "
                            f"{'/'.join(IMAGE_FORMATS)} file") from None
    return array.transpose(2, 0, 1)


def image_files(path: str) -> list[str]:
    """``path`` itself, or the images of a folder in name order."""
    if not os.path.isdir(path):
        return [path]
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DataError(f"{path} holds no image ({', '.join(IMAGE_SUFFIXES)}); pass an image "
                        f"file or a folder of images to --img_path")
    return files


LABELS_FILE = "labels.txt"  # next to the images: "NAME LABEL" per line (tools/cifar_samples.py)


def read_labels(folder: str) -> dict[str, int]:
    """``folder/labels.txt`` as {file name: class index}; empty when there is none. A line that
    is not ``NAME INDEX`` is refused, naming it, rather than scored wrongly."""
    path = os.path.join(folder, LABELS_FILE)
    if not os.path.isfile(path):
        return {}
    labels = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            labels[parts[0]] = label_of(parts, path, number)
    return labels


def label_of(parts: list[str], path: str, number: int) -> int:
    """The class index of a ``labels.txt`` line split into words, read by the project's one
    number reader (``'9' * 5000`` or ``'²'`` pass ``str.isdigit`` and then fail ``int``)."""
    try:
        if len(parts) != 2:
            raise NumberError("not two words")
        return to_int(parts[1], "the label", 0, MAX_CLASSES - 1)
    except NumberError:
        raise DataError(f"{path} line {number} is not 'FILE LABEL' (a class index below "
                        f"{MAX_CLASSES}); fix or remove it") from None


def read_images(path: str) -> Inputs:
    """The images of ``path``, with their true labels when a ``labels.txt`` beside them names
    them (None for an image it does not list)."""
    files = image_files(path)
    known = read_labels(os.path.dirname(files[0]) or ".")
    labels = [known.get(os.path.basename(f)) for f in files] if known else None
    return Inputs(files, np.stack([read_image(f) for f in files]), labels)


def test_images(cfg: dict, indices: list[int]) -> Inputs:
    """CIFAR test images by index, from the config's archive, with their true labels."""
    data = cfg["Data"]
    _, test = load_cifar(DATASETS[data["dataset"]], data["data_path"], data["md5"])
    bad = [i for i in indices if not 0 <= i < len(test.labels)]
    if bad:
        raise DataError(f"--index {bad[0]} is outside the test set (0..{len(test.labels) - 1})")
    return Inputs([f"test image {i}" for i in indices], test.images[indices],
                  test.labels[indices].tolist())


def preprocess(images: np.ndarray, cfg: dict) -> np.ndarray:
    """The test preprocessing of training (``swa_recipe.data.cifar.normalize`` with the model's
    statistics), float32 NCHW."""
    return np.ascontiguousarray(normalize(images, *normalization(cfg)))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Per row, the ``k`` most probable (class, probability), most probable first."""
    probs = softmax(logits)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, probs, strict=True)]


def true_label(inputs: Inputs, i: int, names: list[str]) -> int | None:
    """Image ``i``'s true class, if known; a label outside the model's classes is refused."""
    label = inputs.labels[i] if inputs.labels is not None else None
    if label is not None and not 0 <= label < len(names):
        raise DataError(f"{inputs.names[i]} is labelled {label}, outside the model's "
                        f"{len(names)} classes; check {LABELS_FILE}")
    return label


def format_top_k(inputs: Inputs, logits: np.ndarray, names: list[str], k: int) -> list[str]:
    """One line per image: ``NAME: cat (3) 0.8123, dog (5) 0.1000 [true: cat]``; when true
    labels are known, a last line with the top-1 accuracy over the images that have one."""
    lines, right, labelled = [], 0, 0
    for i, row in enumerate(top_k(logits, k)):
        classes = ", ".join(f"{names[c]} ({c}) {p:.4f}" for c, p in row)
        label = true_label(inputs, i, names)
        true = f" [true: {names[label]}]" if label is not None else ""
        lines.append(f"{inputs.names[i]}: {classes}{true}")
        if label is not None:
            labelled, right = labelled + 1, right + (row[0][0] == label)
    if labelled:
        lines.append(f"accuracy: {right}/{labelled} = {100 * right / labelled:.2f} % (top-1)")
    return lines


def exported_framework(model_dir: str) -> str:
    """Which twin exported ``model_dir`` (by its files); refuse a folder without a model."""
    for framework, files in EXPORTED.items():
        if all(os.path.isfile(os.path.join(model_dir, f)) for f in files):
            return framework
    raise CheckpointError(f"{model_dir} holds no exported model ({PREFIX}.pdmodel or .json "
                          f"with {PREFIX}.pdiparams, or {PREFIX}.pt2); create one with "
                          f"tools/export_model.py --model_path CKPT --save_dir {model_dir}")


def exported_config(model_dir: str) -> dict:
    """The config saved beside an exported model (defaults when absent: 10 classes)."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return validate(default_config())  # validate fills Arch.num_classes from the dataset
    try:
        return validate(load_yaml(path))
    except ConfigError as exc:
        raise CheckpointError(f"{path} is not a config this project wrote ({exc}); export the "
                              f"model again") from None


def class_count(predict, path: str) -> int:
    """How many classes the program scores, from one pass over two black images; it also
    proves the program takes N x 3 x 32 x 32 images, as predict.py and infer.py feed it.
    ``Predictor.num_classes`` lets a caller refuse a ``config.yaml`` of another class count
    (whose class names would be wrong) before classifying anything."""
    try:
        out = np.asarray(predict(np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)))
    except Exception as exc:  # a program for other inputs: each framework raises its own
        raise CheckpointError(f"{path} does not run on 3 x {IMAGE_SIZE} x {IMAGE_SIZE} images "
                              f"({exc.__class__.__name__}); export the model again with "
                              f"tools/export_model.py") from None
    if out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        raise CheckpointError(f"{path} gives outputs of shape {list(out.shape)[:8]} for 2 "
                              f"images, not class scores; export the model again")
    return int(out.shape[1])
