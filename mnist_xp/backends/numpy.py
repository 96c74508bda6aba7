"""NumPy on the host CPU: the Array API reference tail, except the optimizers' updates. Adam's
writes each step's new m, v and θ through NumPy's in-place operators into three fresh arrays
per parameter, momentum's and Nesterov's new v and θ into two, instead of the reference's
six to a dozen temporaries (each a trip through the allocator and a pass over memory). Nothing
they are given is written to."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..nn import ARRAY_API_TAIL, Tail
from .base import Backend


def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step_size: Any,
                beta1: float, beta2: float, eps_hat: Any, decay: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """m' = β₁m + (1-β₁)g,  v' = β₂v + (1-β₂)g²,  θ' = θ - s·m'/(√v' + ε̂), with g + λθ for g
    where λ = decay: the fused form of optim.Adam (s and ε̂ carry the bias corrections).
    Returns new arrays (θ', m', v')."""
    if decay:
        g = g + decay * p
    new_m = np.multiply(m, beta1)
    scratch = np.multiply(g, 1.0 - beta1)
    new_m += scratch
    new_v = np.multiply(v, beta2)
    np.multiply(g, g, out=scratch)
    scratch *= 1.0 - beta2
    new_v += scratch
    new_p = np.sqrt(new_v, out=scratch)
    new_p += eps_hat
    np.divide(new_m, new_p, out=new_p)
    new_p *= -step_size
    new_p += p
    return new_p, new_m, new_v


def momentum_update(p: np.ndarray, g: np.ndarray, v: np.ndarray, lr: Any, momentum: float,
                    decay: float, nesterov: bool) -> tuple[np.ndarray, np.ndarray]:
    """v' = μv + g,  θ' = θ - η·v' (heavy ball) or θ - η·(g + μv') (Nesterov), with g + λθ
    for g where λ = decay: optim.Momentum's update. Returns new arrays (θ', v')."""
    if decay:
        g = g + decay * p
    new_v = np.multiply(v, momentum)
    new_v += g
    if nesterov:
        new_p = np.multiply(new_v, momentum)
        new_p += g
        new_p *= -lr
    else:
        new_p = np.multiply(new_v, -lr)
    new_p += p
    return new_p, new_v


NUMPY_TAIL = Tail("numpy", adam_update=adam_update, momentum_update=momentum_update)


class NumpyBackend(Backend):
    """NumPy on the CPU, with NUMPY_TAIL; `reference=True` keeps the Array API tail
    throughout (what `info --check` compares every library with)."""

    def __init__(self, xp: Any, device: Any = None, name: str = "", note: str = "",
                 reference: bool = False) -> None:
        super().__init__(xp, device, name, note)
        self._tail = ARRAY_API_TAIL if reference else NUMPY_TAIL

    @property
    def tail(self) -> Tail:
        return self._tail


BACKEND = NumpyBackend
