"""Draw detections on an image (boxes and "label score") and encode it as JPEG."""

from __future__ import annotations

import io

from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

_PALETTE = (
    (255, 56, 56),
    (255, 157, 151),
    (255, 112, 31),
    (255, 178, 29),
    (207, 210, 49),
    (72, 249, 10),
    (146, 204, 23),
    (61, 219, 134),
    (26, 147, 52),
    (0, 212, 187),
    (44, 153, 168),
    (0, 194, 255),
    (52, 69, 147),
    (100, 115, 255),
    (0, 24, 236),
    (132, 56, 255),
    (82, 0, 133),
    (203, 56, 255),
    (255, 149, 200),
    (255, 55, 199),
)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Return Pillow's bundled font at `size` pixels (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _text_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `color`."""
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def draw_detections(image: Image.Image, detections, *, in_place: bool = False) -> Image.Image:
    """Return `image` with each detection's box and "label score" drawn on it.

    Line width and font size follow the image size, so labels stay readable on thumbnails and
    on 12 MP photos alike; labels sit above the box, or inside it at the top edge.

    :param in_place: draw on `image` itself (an RGB image the caller owns) instead of a copy,
        which saves a full copy of a large upload (4 bytes per pixel).
    """
    if image.mode != "RGB":
        out = image.convert("RGB")
    else:
        out = image if in_place else image.copy()
    w, h = out.size
    short = min(w, h)
    line = max(1, round(short / 300))
    font = _font(max(10, round(short / 40)))
    draw = ImageDraw.Draw(out)
    pad = max(1, line)
    for det in detections:
        color = _PALETTE[det.class_id % len(_PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in det.box)
        x1, x2 = max(0.0, min(x1, x2)), min(w - 1.0, max(x1, x2))
        y1, y2 = max(0.0, min(y1, y2)), min(h - 1.0, max(y1, y2))
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        text = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        ty = y1 - th if y1 - th >= 0 else y1
        tx = min(x1, max(0.0, w - tw))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return out


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as JPEG bytes."""
    buf = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(
        buf, format="JPEG", quality=quality
    )
    return buf.getvalue()
