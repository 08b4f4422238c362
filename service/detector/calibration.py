"""The int8 calibration and gate photos: CC0 / public-domain scikit-image samples shipped here."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from PIL import ImageOps

from .model.preprocess import letterbox

PHOTO_DIR = Path(__file__).resolve().parent / "data" / "calibration"
MAX_SIDE = 512  # shipped copies are reduced to this longest side (JPEG quality 90)
# scikit-image sample name -> licence, as its docstring in skimage.data states it (0.26).
LICENCES = {
    "astronaut": "public domain (NASA): 'No known copyright restrictions, released into the "
    "public domain'",
    "chelsea": "CC0 by the photographer (Stefan van der Walt)",
    "rocket": "public domain (SpaceX released its photos into the public domain)",
    "hubble_deep_field": "public domain (NASA: 'may be freely used in the public domain')",
    "retina": "CC0 1.0 Universal Public Domain Dedication (Wikimedia Commons)",
    "brick": "CC0 (CC0Textures, Bricks25)",
    "grass": "CC0 (DeviantArt, linolafett 'Grass 01')",
    "gravel": "CC0 (CC0Textures, Gravel04)",
    "cell": "CC0, dedicated to the public domain",
    "text": "public domain (Wikipedia File:Corner.png): 'released into the public domain'",
    "horse": "CC0 given by owner (Andreas Preuss, openclipart)",
    "coffee": "CC0 by the photographer (Rachel Michetti)",
    "camera": "CC0 by the photographer (Lav Varshney)",
    "clock": "public domain, released by the photographer (Stefan van der Walt)",
}
# Disjoint by source photo: the gate never sees a photo (or a variant of one) NNCF calibrated on.
# The gate photos are those where yolov3-tiny finds objects (cup, people, a vase).
CALIBRATION = (
    "astronaut",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "retina",
    "brick",
    "grass",
    "gravel",
    "cell",
    "text",
    "horse",
)
EVALUATION = ("coffee", "camera", "clock")


class CalibrationError(ValueError):
    """A calibration or gate photo cannot be read."""


def _load(name: str, photo_dir: Path) -> Image.Image:
    """Return one shipped photo as RGB."""
    path = photo_dir / f"{name}.jpg"
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:
        raise CalibrationError(
            f"cannot read calibration photo {path} ({exc}); reinstall the detector package or "
            "regenerate the set with `python -m detector.calibration DIR` (needs scikit-image)"
        ) from None


def variants(name: str, image: Image.Image) -> list[tuple[str, Image.Image]]:
    """Return the photo, its mirror image and two 2/3 crops (top-left, bottom-right), named."""
    w, h = image.size
    cw, ch = max(1, w * 2 // 3), max(1, h * 2 // 3)
    return [
        (name, image),
        (f"{name}-mirror", ImageOps.mirror(image)),
        (f"{name}-crop-tl", image.crop((0, 0, cw, ch))),
        (f"{name}-crop-br", image.crop((w - cw, h - ch, w, h))),
    ]


def calibration_images(photo_dir: Path = PHOTO_DIR) -> list[tuple[str, Image.Image]]:
    """Return the named calibration images: every CALIBRATION photo and its variants (44)."""
    return [item for name in CALIBRATION for item in variants(name, _load(name, photo_dir))]


def evaluation_images(
    extra_dir: str | Path | None = None, photo_dir: Path = PHOTO_DIR
) -> list[tuple[str, Image.Image]]:
    """Return the gate's named images: the EVALUATION photos and their variants, then *.jpg
    from `extra_dir` (if given), none of which NNCF calibrates on."""
    images = [item for name in EVALUATION for item in variants(name, _load(name, photo_dir))]
    if extra_dir is not None:
        for path in sorted(Path(extra_dir).glob("*.jpg")):
            with Image.open(path) as image:
                images.append((path.name, image.convert("RGB")))
    return images


def calibration_inputs(
    images: Sequence[tuple[str, Image.Image]], input_shape: tuple[int, int]
) -> list[np.ndarray]:
    """Return each image letterboxed as serving does it: 1x3xHxW float32 arrays in 0..1."""
    width, height = input_shape
    return [np.ascontiguousarray(letterbox(image, width, height)[0]) for _, image in images]


def photo_set_sha256(photo_dir: Path = PHOTO_DIR) -> str:
    """Return one sha256 over the shipped photos (names and bytes): part of an int8 cache key."""
    digest = hashlib.sha256()
    for name in (*CALIBRATION, *EVALUATION):
        digest.update(name.encode() + b"\0" + (photo_dir / f"{name}.jpg").read_bytes())
    return digest.hexdigest()


def skimage_photo(name: str) -> Image.Image:
    """Return one scikit-image sample photo as RGB (grey and binary images are replicated)."""
    try:
        import skimage.data
    except ImportError:
        raise CalibrationError(
            "scikit-image is not installed: install the test group (`make setup`) to regenerate "
            "the calibration photos"
        ) from None
    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, -1)
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]))


def export_photos(dest: str | Path) -> list[Path]:
    """Write every photo in LICENCES from scikit-image as JPEG (longest side <= MAX_SIDE)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in LICENCES:
        image = skimage_photo(name)
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        path = dest / f"{name}.jpg"
        image.save(path, quality=90)
        written.append(path)
    return written


if __name__ == "__main__":  # python -m detector.calibration DIR
    for written_path in export_photos(sys.argv[1] if len(sys.argv) > 1 else PHOTO_DIR):
        print(written_path)
