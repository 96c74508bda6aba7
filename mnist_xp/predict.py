"""Predicting the digits of a user's inputs (pictures, .npy arrays, a Kaggle CSV), each input
on its own: one that cannot be read is that input's one error, and the others still run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, MnistXpError, UsageError
from .files import check_not_inputs, check_output
from .images import need_pillow, read_digits, write_digit_pictures
from .model import MLP


def top3(probabilities: np.ndarray) -> list[tuple[int, float]]:
    """The three likeliest classes and their probabilities, likeliest first."""
    order = np.argsort(-probabilities, kind="stable")[:3]
    return [(int(k), float(probabilities[k])) for k in order]


def check_inputs(inputs: list[Path], model: Path, submission: Path | None,
                 show_preprocessed: Path | None) -> tuple[list[Path], list[Path]]:
    """predict's inputs and outputs, refused before any work where they cannot go together;
    returns the CSV inputs and the pictures among them."""
    csvs = [path for path in inputs if path.suffix.lower() == ".csv"]
    if csvs and len(inputs) > 1:
        raise UsageError("a Kaggle CSV is predicted on its own: pass one .csv and nothing else")
    if submission and not csvs:
        raise UsageError("--submission is for a Kaggle CSV input")
    check_output(submission, "--submission", "submission.csv")
    named = [("--model", model), *(("the input", path) for path in inputs)]
    check_not_inputs([(f"--submission {submission}", submission)], named)
    if show_preprocessed is not None:  # its pictures are named after the inputs
        check_not_inputs([(f"--show-preprocessed {show_preprocessed}'s {path.stem}.png",
                           show_preprocessed / f"{path.stem}.png") for path in inputs], named)
    pictures = [p for p in inputs if p.suffix.lower() not in (".csv", ".npy")]
    if pictures:
        need_pillow(f"reading {pictures[0]}")
    if show_preprocessed is not None:
        need_pillow("--show-preprocessed")
        if show_preprocessed.exists() and not show_preprocessed.is_dir():
            raise UsageError(f"--show-preprocessed {show_preprocessed}: not a folder")
    return csvs, pictures


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
