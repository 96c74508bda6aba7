"""Reading model and checkpoint files, which people download and pass around, with bounded
memory: the metadata first (its size capped), every field of it checked, then only the
members that metadata implies, each member's declared dtype, shape and size checked against it
before a byte of its data is inflated, and exactly that many bytes read. Unknown members,
pickles, compressed members that would inflate far beyond their size, and non-finite numbers
are refused in one line naming the file.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from .config import Config
from .errors import DataError, UsageError
from .optim import OPTIMIZERS

FORMAT_VERSION = 1
# What a model expects of its input, recorded in every model file beside the dataset's name.
INPUT = ("28x28 grayscale, light ink on black as in MNIST, uint8 0..255 (divided by 255) or "
         "floats in [0, 1]")
META_BYTES = 16 << 20  # the metadata (config, history) of any real run is far smaller
GROWTH = 64  # a member inflates at most this much from its compressed size (weights: ~1x)
SLACK = 1 << 20  # ... plus this, for small members that compress well (zero biases)


class ModelFile(NamedTuple):
    """A checked model file: its config and parameters, and all its metadata and arrays."""

    config: Config
    params: list[np.ndarray]
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def dataset(self) -> str | None:
        """What the model was trained on (None in files from before this was recorded)."""
        return self.meta.get("dataset")


def read_model_file(path: Path) -> ModelFile:
    """Read and check a model (or checkpoint) file: the metadata's every field, then the
    parameters (and a checkpoint's optimizer state) it implies, no other member."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return _read(archive, path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a model file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not an mnist-xp model file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _read(archive: zipfile.ZipFile, path: Path) -> ModelFile:
    members = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise DataError(f"{path}: not an mnist-xp model file (member {info.filename!r} "
                            f"is not an array)")
        members[info.filename.removesuffix(".npy")] = info
    if "meta" not in members:
        raise DataError(f"{path}: not an mnist-xp model file (no metadata)")
    meta = _read_meta(archive, members.pop("meta"), path)
    config = check_meta(meta, path)
    sizes = config.sizes
    shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    state = OPTIMIZERS[config.optimizer].STATE if meta.get("kind") == "checkpoint" else ()
    expected = {f"param{i}": shape for i, shape in enumerate(shapes)}
    expected.update({f"{name}{i}": shape for name in state for i, shape in enumerate(shapes)})
    unknown = sorted(set(members) - set(expected))
    if unknown:
        raise DataError(f"{path}: not an mnist-xp model file (unknown member "
                        f"{unknown[0]!r} for {config.describe()})")
    arrays = {}
    for name, shape in expected.items():
        info = members.get(name)
        what = (f"the {config.optimizer} state '{name.rstrip('0123456789')}'"
                if not name.startswith("param") else f"parameter {name}")
        if info is None:
            if name.startswith("param"):
                raise DataError(f"{path}: parameters are not numbered param0.."
                                f"param{len(shapes) - 1}")
            raise DataError(f"{path}: {what} is missing or does not match the parameters' "
                            f"shapes and dtype")
        arrays[name] = _read_array(archive, info, shape, np.dtype(config.dtype), what, path)
    non_finite = [name for name, a in arrays.items() if not np.isfinite(a).all()]
    if non_finite:
        raise DataError(f"{path}: {', '.join(non_finite)} hold NaN or infinity (a diverged "
                        f"run's weights): not a usable model")
    params = [arrays[f"param{i}"] for i in range(len(shapes))]
    return ModelFile(config, params, meta, arrays)


def _open_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path,
                  limit: int | None = None) -> BinaryIO:
    """A member's stream, once its declared size is within `limit` and within what its
    compressed size can honestly inflate to. (numpy reads at most 10,000 bytes of an .npy
    header; what follows is read by size.)"""
    if limit is not None and info.file_size > limit:
        raise DataError(f"{path}: member {info.filename!r} declares {info.file_size:,} bytes, "
                        f"more than its contents can need ({limit:,})")
    if info.file_size > GROWTH * info.compress_size + SLACK:
        raise DataError(f"{path}: member {info.filename!r} would inflate from "
                        f"{info.compress_size:,} to {info.file_size:,} bytes: refused")
    return archive.open(info)


def _header(stream: BinaryIO, path: Path, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """An .npy member's declared shape, order and dtype, read from its header alone."""
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise DataError(f"{path}: not an mnist-xp model file ({name} is .npy version "
                        f"{version})")
    return read(stream)


def _read_meta(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> dict[str, Any]:
    with _open_bounded(archive, info, path, META_BYTES) as stream:
        shape, _, dtype = _header(stream, path, "meta")
        if dtype.hasobject or dtype.kind != "U" or shape != ():
            raise DataError(f"{path}: not an mnist-xp model file (its metadata is "
                            f"{'pickled' if dtype.hasobject else 'not a JSON text'})")
        raw = stream.read(dtype.itemsize)
    try:
        text = np.frombuffer(raw, dtype=dtype)[0]
        meta = json.loads(str(text), parse_constant=_refuse_constant)
    except (ValueError, IndexError, RecursionError) as exc:
        raise DataError(f"{path}: not an mnist-xp model file (metadata: "
                        f"{_first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not an mnist-xp model file (metadata is not an object)")
    return meta


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shape: tuple[int, ...],
                dtype: np.dtype, what: str, path: Path) -> np.ndarray:
    """The member's array: its header must declare this shape and dtype, and exactly the
    bytes they need are read."""
    nbytes = math.prod(shape) * dtype.itemsize
    with _open_bounded(archive, info, path) as stream:
        found_shape, fortran, found_dtype = _header(stream, path, info.filename)
        if found_dtype.hasobject:
            raise DataError(f"{path}: not an mnist-xp model file ({info.filename} is "
                            f"pickled)")
        if tuple(found_shape) != shape or found_dtype != dtype:
            if what.startswith("parameter"):
                problem = (f"parameters are not all {dtype}" if tuple(found_shape) == shape
                           else f"parameter shapes do not match: {info.filename} is "
                                f"{tuple(found_shape)}, the config needs {shape}")
                raise DataError(f"{path}: {problem}")
            raise DataError(f"{path}: {what} is missing or does not match the parameters' "
                            f"shapes and dtype")
        buffer = bytearray(nbytes)
        if stream.readinto(buffer) != nbytes or stream.read(1):
            raise DataError(f"{path}: {info.filename} holds other than the {nbytes:,} bytes "
                            f"its header declares")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def check_meta(meta: dict[str, Any], path: Path) -> Config:
    """Every field of a model file's metadata, each refused in one line naming it; returns the
    configuration it describes."""
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: model format version {meta.get('format_version')!r} is not "
                        f"{FORMAT_VERSION}")
    if meta.get("input", INPUT) != INPUT:  # files from before it was recorded: MNIST's
        raise DataError(f"{path}: the model expects input prepared as {meta['input']!r}, and "
                        f"this mnist-xp prepares {INPUT!r}")
    values = meta.get("config")
    if not isinstance(values, dict):
        raise DataError(f"{path}: bad model config (the field 'config' is not an object)")
    for name, value in values.items():
        problem = _config_field(name, value)
        if problem:
            raise DataError(f"{path}: bad model config (the field '{name}' {problem})")
    try:
        config = Config.from_dict(values)
    except (KeyError, TypeError, ValueError, UsageError) as exc:
        raise DataError(f"{path}: bad model config ({exc})") from None
    if meta.get("dataset") is not None and not isinstance(meta["dataset"], str):
        raise DataError(f"{path}: the field 'dataset' is not a name")
    history = meta.get("history", [])
    if not isinstance(history, list) or not all(_is_record(r) for r in history):
        raise DataError(f"{path}: the field 'history' is not a list of evaluations (each "
                        f"with a step and finite loss and accuracies)")
    return config


def _config_field(name: str, value: Any) -> str | None:
    """Why a config field's value is the wrong kind of thing, or None (Config checks the
    ranges)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "hidden":
        if not isinstance(value, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in value):
            return "is not a list of layer sizes"
        if sum(value) > 1 << 20 or len(value) > 64:
            return "describes a network far larger than any this program trains"
    elif name in ("activation", "output", "loss", "optimizer", "dtype"):
        if not isinstance(value, str):
            return "is not a name"
    elif name in ("lr", "momentum", "weight_decay"):
        if not number or not math.isfinite(value):
            return "is not a finite number"
    elif name in ("steps", "seed", "augment", "batch_size", "epochs") and not (
            value is None and name in ("batch_size", "epochs")) and (
            not isinstance(value, int) or isinstance(value, bool)):
        return "is not a whole number"
    return None


def _is_record(record: Any) -> bool:
    keys = ("step", "loss", "train_accuracy", "test_accuracy")
    return isinstance(record, dict) and all(
        isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)
        and math.isfinite(record[k]) for k in keys)
