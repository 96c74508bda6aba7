"""Your own digits as MNIST digits: read PNG/JPEG (Pillow, extra `image`), .npy arrays and
Kaggle CSVs, and preprocess pictures the way MNIST was made (LeCun et al.):

1. grayscale, upright as the camera's EXIF orientation says;
2. ink told from paper: the paper is what most pixels show, so a picture whose median is
   nearer its lightest value is dark ink on light paper (then inverted), else light on dark;
3. ink measured against the paper around it (its level estimated by a grey-scale closing or
   opening wider than the strokes), so that shadows and uneven light do not become ink;
4. crop to the digit's box (refusing a picture with too little ink to be a digit);
5. fit in 20x20, keeping the aspect ratio, and pad to 28x28;
6. shift the centre of mass to the centre.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .data import PIXELS, read_kaggle_csv
from .errors import DataError, UsageError

SIDE = 28
BOX = 20
INK = 0.25  # a pixel is ink when it stands this far above the paper, as a share of the most
CONTRAST = 0.1  # no digit where no pixel stands this far above the paper, as a share of 255
MIN_INK = 0.002  # no digit where ink covers less than this share of the picture ...
MIN_INK_PIXELS = 8  # ... or fewer pixels than this
THUMBNAIL = 128  # the paper's level is estimated on a picture this size, then scaled back
PICTURE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # the only decoders used
MAX_PIXELS = 64_000_000  # more than any phone's photo (a 24 MP one is 6000x4000)
WORKING = 1024  # a larger picture is reduced to this many pixels on its longer side


def _open_image(path: Path) -> np.ndarray:
    """Grayscale pixels (H, W) as float in [0, 255], at most WORKING pixels on a side.

    Only the formats a digit's picture comes in are opened (never a decoder that starts
    another program, as EPS would), a picture of more than MAX_PIXELS is refused from its
    header, and a large one is reduced while it is decoded (JPEG's draft mode, then a box
    reduction) before any float work. 16-bit pictures are scaled to 8 bits, not clipped."""
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise UsageError('reading PNG/JPEG needs Pillow: pip install "mnist-xp[image]"') from None
    try:
        with warnings.catch_warnings():  # a picture past Pillow's bomb warning: refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path, formats=PICTURE_FORMATS)
        with opened:
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise DataError(f"{path}: {width}x{height} is {width * height / 1e6:.0f} "
                                f"million pixels, more than the {MAX_PIXELS / 1e6:.0f} million "
                                f"a photo of a digit needs: scale it down first")
            opened.thumbnail((WORKING, WORKING), Image.Resampling.BOX)  # draft, then reduce
            picture = ImageOps.exif_transpose(opened)  # a phone's photo, upright
            if picture.mode.startswith("I"):  # 16 bits a pixel: scaled, not clipped
                picture = picture.point(lambda value: value / 257)
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                # transparent pixels are background: composite on white
                rgba = picture.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                picture = Image.alpha_composite(white, rgba)
            return np.asarray(picture.convert("L"), dtype=np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (only {', '.join(PICTURE_FORMATS)} "
                        f"pictures are opened)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def ink(gray: np.ndarray) -> np.ndarray:
    """How strongly each pixel is ink rather than the paper around it, 0..255: steps 2 and 3
    above. The paper's level is estimated on a thumbnail with a window a quarter of it wide
    (the maximum then the minimum for light paper, the reverse for dark), then scaled back up.
    On light paper ink is measured as a share of the paper's brightness there, since light
    multiplies what the paper and the ink reflect: a digit in a shadow is as strong as one in
    full light. On dark paper (a screen, a digital drawing) it is the difference."""
    from PIL import Image, ImageFilter

    gray = np.asarray(gray, dtype=np.float64)
    light_paper = np.median(gray) > (gray.min() + gray.max()) / 2  # most pixels are paper
    height, width = gray.shape
    scale = min(1.0, THUMBNAIL / max(height, width))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    window = max(3, min(small) // 4 | 1)
    first, then = ((ImageFilter.MaxFilter, ImageFilter.MinFilter) if light_paper
                   else (ImageFilter.MinFilter, ImageFilter.MaxFilter))
    paper = np.asarray(Image.fromarray(gray.astype(np.float32), mode="F")
                       .resize(small, Image.Resampling.BOX)
                       .filter(first(window)).filter(then(window))
                       .resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)
    if light_paper:
        return np.clip((paper - gray) / np.maximum(paper, 1.0), 0, 1) * 255
    return np.clip(gray - paper, 0, 255)


def preprocess(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """A grayscale picture (H, W) in [0, 255] -> an MNIST-style 28x28 uint8 digit, white ink
    on black, its bounding box fitted in 20x20 and its centre of mass at the centre."""
    from PIL import Image

    strength = ink(gray)
    if strength.max() < CONTRAST * 255:
        raise DataError(f"{name}: no digit found (the picture is blank or has no contrast)")
    mask = strength > INK * strength.max()
    if mask.sum() < max(MIN_INK_PIXELS, MIN_INK * mask.size):
        raise DataError(f"{name}: no digit found (only {int(mask.sum())} pixels of ink, too "
                        f"few for a digit)")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    digit = strength[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
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
    """MNIST-format digits from .npy, as model.predict takes them: (784,) or (28, 28) for one,
    (N, 784) or (N, 28, 28) for many; uint8 (or other integers) in 0..255 or floats in [0, 1].
    They are used as they are, without preprocessing."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    from .model import as_pixels

    try:  # the very checks model.predict makes
        pixels, _ = as_pixels(array)
    except UsageError as exc:
        raise DataError(f"{path}: {exc}") from None
    if pixels.dtype == np.uint8:
        return pixels
    return np.rint(pixels * 255).astype(np.uint8)


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


def write_digit_pictures(folder: Path, source: Path, digits: np.ndarray,
                         written: set[str]) -> None:
    """The 28x28 images the network saw, as PNG, named after their input; a name an earlier
    input took gets a suffix (7.png, then 7_2.png), so that no picture overwrites another."""
    from PIL import Image

    from .files import atomic_write

    for index, digit in enumerate(digits):
        stem = source.stem if len(digits) == 1 else f"{source.stem}-{index}"
        name, number = stem, 2
        while name in written:
            name, number = f"{stem}_{number}", number + 1
        written.add(name)
        picture = Image.fromarray(digit.reshape(28, 28))
        atomic_write(folder / f"{name}.png", lambda handle, p=picture: p.save(handle, "PNG"))


def need_pillow(flag: str) -> None:
    """UsageError naming the extra, before any work, where Pillow is not installed."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UsageError(f'{flag} needs Pillow: pip install "mnist-xp[image]"') from None
