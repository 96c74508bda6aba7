"""Gradient-descent updates, applied in place to the parameter arrays. Written once for any
Array API namespace: nothing here imports an array library.

L2 weight decay λ adds λ·W to the gradient of every weight matrix (2-D parameter), which is the
gradient of (λ/2)·||W||²; biases are not decayed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from array_api_compat import array_namespace

Array = Any


def _with_decay(p: Array, g: Array, weight_decay: float) -> Array:
    return g + weight_decay * p if weight_decay and p.ndim == 2 else g


def _zeros_like_each(params: list[Array]) -> list[Array]:
    xp = array_namespace(*params)
    return [xp.zeros_like(p) for p in params]


class SGD:
    """θ ← θ - η·g"""

    STATE: tuple[str, ...] = ()  # names of the per-parameter state lists (for checkpoints)

    def __init__(self, params: list[Array], lr: float, weight_decay: float = 0.0) -> None:
        self.lr, self.weight_decay = lr, weight_decay
        self.t = 0

    def step(self, params: list[Array], grads: list[Array]) -> None:
        self.t += 1
        for p, g in zip(params, grads):
            p -= self.lr * _with_decay(p, g, self.weight_decay)


class Momentum:
    """v ← μ·v + g;  θ ← θ - η·v  (heavy-ball momentum)"""

    STATE = ("velocity",)

    def __init__(self, params: list[Array], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.t = 0
        self.velocity = _zeros_like_each(params)

    def step(self, params: list[Array], grads: list[Array]) -> None:
        self.t += 1
        for p, g, v in zip(params, grads, self.velocity):
            v *= self.momentum
            v += _with_decay(p, g, self.weight_decay)
            p -= self.lr * v


class Adam:
    """Adam (Kingma & Ba) with step-dependent bias correction, t = 1, 2, ...:

    m ← β₁m + (1-β₁)g    v ← β₂v + (1-β₂)g²    θ ← θ - η·m̂ / (√v̂ + ε)
    m̂ = m / (1-β₁ᵗ)      v̂ = v / (1-β₂ᵗ)

    `fused_update(p, g, m, v, step_size, beta1, beta2, eps_hat, decay)`, when given, does one
    parameter's whole update in one kernel (mnist_xp.fused); decay is the L2 λ for weight
    matrices, 0 for biases. The default is the Array API update below.
    """

    STATE = ("m", "v")

    def __init__(self, params: list[Array], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, fused_update: Callable[..., None] | None = None
                 ) -> None:
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.fused_update = fused_update
        self.t = 0
        self.m = _zeros_like_each(params)
        self.v = _zeros_like_each(params)

    def step(self, params: list[Array], grads: list[Array]) -> None:
        self.t += 1
        xp = array_namespace(*params)
        beta1, beta2 = self.betas
        correction1 = 1.0 - beta1**self.t
        root_correction2 = math.sqrt(1.0 - beta2**self.t)
        if self.fused_update is not None:
            # η·m̂/(√v̂ + ε) = (η√(1-β₂ᵗ)/(1-β₁ᵗ))·m/(√v + ε√(1-β₂ᵗ))
            step_size = self.lr * root_correction2 / correction1
            for p, g, m, v in zip(params, grads, self.m, self.v):
                decay = self.weight_decay if p.ndim == 2 else 0.0
                self.fused_update(p, g, m, v, step_size, beta1, beta2,
                                  self.eps * root_correction2, decay)
            return
        for p, g, m, v in zip(params, grads, self.m, self.v):
            g = _with_decay(p, g, self.weight_decay)
            m *= beta1
            m += (1.0 - beta1) * g
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            # η·m̂/(√v̂ + ε) with m̂ = m/(1-β₁ᵗ), √v̂ = √v/√(1-β₂ᵗ)
            p -= (self.lr / correction1) * m / (xp.sqrt(v) / root_correction2 + self.eps)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(name: str, params: list[Array], lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9, fused_adam: Callable[..., None] | None = None
                   ) -> SGD | Momentum | Adam:
    """The optimizer `name`; `fused_adam` (a Tail's adam_update) is used by Adam only."""
    if name == "momentum":
        return Momentum(params, lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return Adam(params, lr, weight_decay=weight_decay, fused_update=fused_adam)
    return OPTIMIZERS[name](params, lr, weight_decay=weight_decay)
