"""Pictures of a trained model (matplotlib, extra `plot`): its confusion matrix, training
curves, test mistakes and first-layer weights, with report.md linking them and listing each
class's precision and recall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data import CLASSES, Dataset
from .files import atomic_write
from .model import MLP
from .plotting import pyplot, save_png
from .train import evaluate

FILES = ("confusion-matrix.png", "training-curves.png", "mistakes.png", "weights.png",
         "report.md")  # what write_report writes into its folder
MISTAKES = 48  # digits in mistakes.png
TILES = 64  # first-layer units in weights.png


def precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """precision_k = C[k, k] / Σ_i C[i, k] (column), recall_k = C[k, k] / Σ_j C[k, j] (row);
    NaN where nothing was predicted or present."""
    hits = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / confusion.sum(axis=0), hits / confusion.sum(axis=1)


def confusion_figure(plt: Any, confusion: np.ndarray, accuracy: float) -> Any:
    figure, axes = plt.subplots(figsize=(6.4, 5.6))
    shown = axes.imshow(confusion, cmap="Blues")
    figure.colorbar(shown, ax=axes, label="test images")
    for (true, predicted), count in np.ndenumerate(confusion):
        color = "white" if count > confusion.max() / 2 else "black"
        axes.text(predicted, true, str(count), ha="center", va="center", fontsize=7, color=color)
    axes.set(xticks=range(CLASSES), yticks=range(CLASSES), xlabel="predicted digit",
             ylabel="true digit", title=f"Confusion matrix, test accuracy {accuracy:.2%}")
    figure.tight_layout()
    return figure


def curves_figure(plt: Any, records: list[dict[str, float]]) -> Any:
    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 4))
    if not records:
        for axes in (loss, accuracy):
            axes.text(0.5, 0.5, "this model file holds no training history", ha="center",
                      va="center", transform=axes.transAxes)
    else:
        steps = [r["step"] for r in records]
        loss.plot(steps, [r["loss"] for r in records], marker=".")
        loss.set_yscale("log")
        accuracy.plot(steps, [100 * r["train_accuracy"] for r in records], marker=".",
                      label="train")
        accuracy.plot(steps, [100 * r["test_accuracy"] for r in records], marker=".",
                      label="test")
        accuracy.legend()
    loss.set(xlabel="step", ylabel="training loss", title="Loss")
    accuracy.set(xlabel="step", ylabel="accuracy (%)", title="Accuracy")
    for axes in (loss, accuracy):
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return figure


def mistakes_figure(plt: Any, images: np.ndarray, labels: np.ndarray,
                    predicted: np.ndarray) -> Any:
    wrong = np.flatnonzero(predicted != labels)[:MISTAKES]
    columns = 8
    rows = max(1, -(-len(wrong) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.4),
                                squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, index in zip(grid.flat, wrong):
        axes.imshow(images[index].reshape(28, 28), cmap="gray_r")
        axes.set_title(f"{labels[index]}→{predicted[index]}", fontsize=9, color="crimson")
    if not len(wrong):
        grid.flat[0].text(0, 0.5, "no mistakes on the test set", fontsize=11)
    figure.suptitle(f"Misclassified test digits, true→predicted (first {len(wrong)})")
    figure.tight_layout()
    return figure


def weights_figure(plt: Any, first_layer: np.ndarray) -> Any:
    """Each first-layer unit's 784 incoming weights as a 28x28 tile: red excites, blue
    inhibits, on one symmetric colour scale."""
    units = min(TILES, first_layer.shape[1])
    columns = 8 if units > 8 else units
    rows = -(-units // columns)
    limit = float(np.abs(first_layer[:, :units]).max()) or 1.0
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1 + 0.5),
                                squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for unit, axes in zip(range(units), grid.flat):
        axes.imshow(first_layer[:, unit].reshape(28, 28), cmap="coolwarm", vmin=-limit,
                    vmax=limit)
    figure.suptitle(f"First-layer weights, {units} of {first_layer.shape[1]} units")
    figure.tight_layout()
    return figure


def write_report(model: MLP, records: list[dict[str, float]], data: Dataset, out: Path,
                 model_path: Path) -> list[Path]:
    """Write the four pictures and report.md into `out`; returns the files written."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate(model, data.test_images, data.test_labels)
    predicted = model.predict(data.test_images)
    labels = np.asarray(data.test_labels, dtype=np.int64)
    pictures = {
        "confusion-matrix.png": confusion_figure(plt, evaluation.confusion, evaluation.accuracy),
        "training-curves.png": curves_figure(plt, records),
        "mistakes.png": mistakes_figure(plt, data.test_images, labels, predicted),
        "weights.png": weights_figure(plt, model.host_params()[0]),
    }
    for name, figure in pictures.items():
        save_png(figure, out / name)
    precision, recall = precision_recall(evaluation.confusion)
    lines = [f"# Report: {model_path.name}", "",
             f"{model.config.describe()}, dataset {data.name}; test accuracy "
             f"**{evaluation.accuracy:.2%}** on {len(labels):,} images "
             f"({int((predicted != labels).sum())} mistakes).", "",
             "| digit | test images | precision | recall |", "|---:|---:|---:|---:|"]
    for digit in range(CLASSES):
        lines.append(f"| {digit} | {int(evaluation.confusion[digit].sum())} "
                     f"| {precision[digit]:.2%} | {recall[digit]:.2%} |")
    lines += ["", "Precision: of the images predicted as the digit, the share that are it. "
              "Recall: of the images of the digit, the share predicted as it.", "",
              "![Confusion matrix](confusion-matrix.png)", "",
              "![Training curves](training-curves.png)", "",
              "![Misclassified test digits](mistakes.png)", "",
              "![First-layer weights](weights.png)", ""]
    text = "\n".join(lines)
    atomic_write(out / "report.md", lambda handle: handle.write(text.encode()))
    return [out / name for name in pictures] + [out / "report.md"]
