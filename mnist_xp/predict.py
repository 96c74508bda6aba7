"""Predicting the digits of a user's inputs (pictures, .npy arrays, a Kaggle CSV), each input
on its own: one that cannot be read is that input's one error, and the others still run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, MnistXpError
from .images import read_digits, write_digit_pictures
from .model import MLP


def top3(probabilities: np.ndarray) -> list[tuple[int, float]]:
    """The three likeliest classes and their probabilities, likeliest first."""
    order = np.argsort(-probabilities, kind="stable")[:3]
    return [(int(k), float(probabilities[k])) for k in order]


def predict_inputs(model: MLP, inputs: list[Path], on_error: Callable[[MnistXpError], None],
                   show_preprocessed: Path | None = None) -> list[dict[str, Any]]:
    """{"input", "digit", "top3"} for every digit of every input; an input that fails, in any
    way, is handed to on_error as one DataError and skipped. With show_preprocessed, the
    28x28 images the network saw are written there as PNG."""
    results, written = [], set()
    for path in inputs:
        try:
            digits, names = read_digits(path)
        except MnistXpError as exc:
            on_error(exc)
            continue
        except Exception as exc:  # any failure of one input is that input's one line
            on_error(DataError(f"{path}: cannot be read ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"))
            continue
        for name, p in zip(names, model.predict_proba(digits)):
            results.append({"input": name, "digit": int(np.argmax(p)), "top3": top3(p)})
        if show_preprocessed is not None:
            write_digit_pictures(show_preprocessed, path, digits, written)
    return results


def submission(results: list[dict[str, Any]]) -> str:
    """Kaggle's ImageId,Label CSV for the results of one CSV input."""
    lines = ["ImageId,Label"] + [f"{i},{r['digit']}" for i, r in enumerate(results, 1)]
    return "\n".join(lines) + "\n"


def as_json(results: list[dict[str, Any]], classes: tuple[str, ...] | None) -> list[Any]:
    """The results as predict --json prints them (with class names where the dataset has
    them)."""
    return [{"input": r["input"], "digit": r["digit"],
             **({"class": classes[r["digit"]]} if classes else {}),
             "top3": [{"digit": k, "probability": p} for k, p in r["top3"]]} for r in results]
