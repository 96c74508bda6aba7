"""mnist_xp: a from-scratch MLP for MNIST, written once against the Array API standard, so the
same forward pass, backpropagation and updates run on NumPy, CuPy, torch, JAX and Dask, on a CPU,
a GPU or a Dask cluster."""

from .backends import Backend, select_backend
from .config import Config
from .data import Dataset, read_idx_images, read_idx_labels, read_kaggle_csv
from .datasets import load_dataset
from .errors import BackendError, DataError, DivergenceError, MnistXpError, UsageError
from .model import MLP
from .presets import PRESETS
from .train import History, evaluate, train
from .version import __version__

__all__ = [
    "MLP", "PRESETS", "Backend", "BackendError", "Config", "DataError", "Dataset",
    "DivergenceError", "History", "MnistXpError", "UsageError", "evaluate", "load_dataset",
    "__version__", "read_idx_images", "read_idx_labels", "read_kaggle_csv", "select_backend",
    "train",
]
