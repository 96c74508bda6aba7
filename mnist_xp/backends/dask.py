"""Dask arrays on the local scheduler: data split into row chunks, one computation per step.

Dask arrays are lazy: each operation adds tasks to a graph and nothing runs until the graph is
computed. The math runs in one pass over arrays chunked by rows (`--chunk-size` rows each), so
a full-batch gradient Xᵀ·dZ is Dask's sum of the chunks' products. `compile` persists the
step's results (parameters, optimizer state and loss) in one computation, so every step starts
from computed arrays and the graph does not grow from step to step. Only scalars come back to
the caller, at log and evaluation points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import array_api_compat.dask.array as dask_xp
import dask
import dask.array as da
import numpy as np

from .base import Backend


class DaskBackend(Backend):
    """array_api_compat.dask.array on the local (threaded) scheduler."""

    data_is_chunked = True

    @property
    def default_chunk_rows(self) -> int | None:
        """Rows per Dask chunk of the data: few chunks, each large enough that its tasks'
        scheduling cost (tens of µs each) stays small against their arithmetic."""
        return 10_000

    def asarray(self, host: Any, dtype: Any = None, *, copy: bool | None = True,
                chunk_rows: int | None = None) -> Any:
        """A Dask array over a host copy, split into chunks of chunk_rows rows (one chunk by
        default: parameters and small arrays)."""
        array = np.array(host, dtype=dtype, copy=True if copy else None)
        if array.ndim == 0:
            return da.from_array(array)
        return da.from_array(array, chunks=(chunk_rows or -1,) + (-1,) * (array.ndim - 1))

    def host_view(self, array: Any) -> np.ndarray:
        return np.asarray(array.compute())

    def ready(self, tree: Any) -> Any:
        """Compute every Dask array in tree in one go and keep the results: from then on their
        graphs are just the computed chunks."""
        (persisted,) = dask.persist(tree)
        return persisted

    def compile(self, function: Callable[..., Any], static_argnames: Sequence[str] = ()
                ) -> Callable[..., Any]:
        def persisted(*args: Any, **kwargs: Any) -> Any:
            return self.ready(function(*args, **kwargs))

        return persisted


def select(kind: str, index: int | None) -> Backend:
    """Dask on this machine's CPU with the threaded scheduler (kind 'cpu' or 'auto')."""
    return DaskBackend(dask_xp, "cpu", name=f"dask {dask.__version__} on cpu (threads)")


BACKEND = DaskBackend
