"""Your own digits as MNIST digits: read PNG/JPEG (Pillow, extra `image`), .npy arrays and
Kaggle CSVs, and preprocess pictures the way MNIST was made (LeCun et al.):

1. grayscale;                      4. fit in 20x20, keeping the aspect ratio;
2. invert a light background;      5. pad to 28x28;
3. crop to the digit's box;        6. shift the centre of mass to the centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import PIXELS, read_kaggle_csv
from .errors import DataError, UsageError

SIDE = 28
BOX = 20
INK = 0.25  # a pixel is ink when it is this far from the background, as a fraction of 255


def _open_image(path: Path) -> np.ndarray:
    """Grayscale pixels (H, W) as float in [0, 255]."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UsageError('reading PNG/JPEG needs Pillow: pip install "mnist-xp[image]"') from None
    try:
        with Image.open(path) as picture:
            picture.load()
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                # transparent pixels are background: composite on white
                rgba = picture.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                picture = Image.alpha_composite(white, rgba)
            return np.asarray(picture.convert("L"), dtype=np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def preprocess(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """A grayscale picture (H, W) in [0, 255] -> an MNIST-style 28x28 uint8 digit, white ink
    on black, its bounding box fitted in 20x20 and its centre of mass at the centre."""
    from PIL import Image

    gray = np.asarray(gray, dtype=np.float64)

    def background() -> float:
        return float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))

    if background() > 127:  # dark ink on a light background: invert
        gray = 255.0 - gray
    gray = np.clip(gray - background(), 0, 255)  # paper that is not quite black becomes 0
    ink = gray > INK * 255
    if not ink.any():
        raise DataError(f"{name}: no digit found (the picture is blank or has no contrast)")
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    digit = gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    digit = digit * (255.0 / digit.max())
    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = np.asarray(Image.fromarray(digit.astype(np.float32), mode="F")
                        .resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    fitted = np.clip(fitted, 0, 255)
    canvas = np.zeros((SIDE, SIDE))
    top, left = (SIDE - size[1]) // 2, (SIDE - size[0]) // 2
    canvas[top:top + size[1], left:left + size[0]] = fitted
    return np.rint(_centre_mass(canvas)).astype(np.uint8)


def _centre_mass(canvas: np.ndarray) -> np.ndarray:
    """Shift by whole pixels so the centre of mass lands on the centre ((side - 1) / 2)."""
    total = canvas.sum()
    ys, xs = np.indices(canvas.shape)
    centre = (SIDE - 1) / 2
    dy = int(np.rint(centre - (ys * canvas).sum() / total))
    dx = int(np.rint(centre - (xs * canvas).sum() / total))
    shifted = np.zeros_like(canvas)
    src_y, dst_y = slice(max(0, -dy), SIDE - max(0, dy)), slice(max(0, dy), SIDE - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), SIDE - max(0, dx)), slice(max(0, dx), SIDE - max(0, -dx))
    shifted[dst_y, dst_x] = canvas[src_y, src_x]
    return shifted


def read_npy_digits(path: Path) -> np.ndarray:
    """MNIST-format digits from .npy: (28, 28), (N, 28, 28) or (N, 784); uint8 in 0..255 or
    floats in [0, 1]. They are used as they are, without preprocessing."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    if array.shape == (SIDE, SIDE):
        array = array[None]
    if array.ndim == 3 and array.shape[1:] == (SIDE, SIDE):
        array = array.reshape(len(array), PIXELS)
    if array.ndim != 2 or array.shape[1] != PIXELS:
        raise DataError(f"{path}: expected digits shaped (28, 28), (N, 28, 28) or (N, 784), "
                        f"got {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f" and np.isfinite(array).all() and array.size and (
            array.min() >= 0 and array.max() <= 1):
        return np.rint(array * 255).astype(np.uint8)
    if array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise DataError(f"{path}: pixels must be uint8 0..255 or floats in [0, 1], got "
                    f"{array.dtype}")


def read_digits(path: Path) -> tuple[np.ndarray, list[str]]:
    """(N, 784) uint8 digits and a name for each, from a picture, a .npy or a Kaggle CSV."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        digits = read_npy_digits(path)
        return digits, [f"{path}[{i}]" for i in range(len(digits))]
    if suffix == ".csv":
        digits, _ = read_kaggle_csv(path)
        return digits, [f"{path}:{i + 1}" for i in range(len(digits))]
    return preprocess(_open_image(path), str(path)).reshape(1, PIXELS), [str(path)]
