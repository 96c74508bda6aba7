"""PyTorch, through array_api_compat: the CPU or cuda:N, synchronisation, TF32 and out-of-memory
errors. The math runs eagerly, op by op, as on NumPy; nothing here uses autograd."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .base import Backend
from .libraries import pick_gpu


class TorchBackend(Backend):
    """torch on a torch.device ('cpu' or 'cuda:N')."""

    @property
    def device_name(self) -> str:
        device = torch.device(self.device)
        return "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"

    @property
    def on_gpu(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @property
    def supports_tf32(self) -> bool:
        return self.on_gpu and torch.cuda.get_device_capability(self.device) >= (8, 0)

    @property
    def hardware(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.on_gpu else ""

    def host_view(self, array: Any) -> np.ndarray:
        return array.detach().cpu().numpy()

    def synchronize(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def tf32(self, enabled: bool) -> Iterator[None]:
        if not self.on_gpu:
            with super().tf32(enabled):
                yield
            return
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    @contextlib.contextmanager
    def peak_memory(self) -> Iterator[list[int | None]]:
        """torch's own count of live bytes on a GPU; None on the CPU, where tracemalloc does
        not see torch's allocator."""
        peak: list[int | None] = [None]
        if not self.on_gpu:
            yield peak
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        try:
            yield peak
        finally:
            peak[0] = torch.cuda.max_memory_allocated(self.device) - before

    def is_out_of_memory(self, exc: BaseException) -> bool:
        # on the CPU torch raises RuntimeError "DefaultCPUAllocator: can't allocate memory"
        return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
            isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def select(kind: str, index: int | None) -> Backend:
    """torch on the CPU, on cuda:index, or ('auto') on cuda:0 when torch sees a GPU."""
    import array_api_compat.torch as xp

    version = torch.__version__
    count = torch.cuda.device_count() if kind != "cpu" and torch.cuda.is_available() else 0
    reason = ("this torch is a CPU-only build" if torch.version.cuda is None
              else "torch sees no CUDA GPU")
    index = None if kind == "cpu" else pick_gpu("torch", kind, index, count, reason)
    if index is None:
        note = f"auto chose the CPU: {reason}" if kind == "auto" else ""
        return TorchBackend(xp, torch.device("cpu"), name=f"torch {version} on cpu", note=note)
    name = f"torch {version} on cuda:{index} ({torch.cuda.get_device_name(index)})"
    return TorchBackend(xp, torch.device("cuda", index), name=name,
                        note="auto chose CUDA" if kind == "auto" else "")


BACKEND = TorchBackend
