"""Gradient-descent updates as functions: `update(params, grads, state)` returns the new
parameters and the new state, and callers use only what it returns, so the same code is
correct on libraries whose arrays are immutable (JAX) or lazy (Dask). The Array API code here
changes nothing it was given; a fused Adam kernel (CuPy's) writes its results into p, m and v
and returns them, which is the same to a caller that rebinds. Written once for any Array API
namespace: nothing here imports an array library.

The state is a dict of arrays: the step count t (a 0-d array of the parameters' dtype, so that
a compiled step never turns it into a Python number) and each optimizer's per-parameter lists
(STATE names them, for checkpoints).

L2 weight decay λ adds λ·W to the gradient of every weight matrix (2-D parameter), which is the
gradient of (λ/2)·||W||²; biases are not decayed. The learning rate η of step t is η·f(t), f a
schedule of mnist_xp.schedules (1 by default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from array_api_compat import array_namespace, device

from .schedules import CONSTANT, Schedule

Array = Any
State = dict[str, Any]


def _with_decay(p: Array, g: Array, weight_decay: float) -> Array:
    return g + weight_decay * p if weight_decay and p.ndim == 2 else g


class SGD:
    """θ ← θ - η·g"""

    STATE: tuple[str, ...] = ()  # names of the per-parameter state lists

    def __init__(self, lr: float, weight_decay: float = 0.0,
                 schedule: Schedule = CONSTANT) -> None:
        self.lr, self.weight_decay, self.schedule = lr, weight_decay, schedule

    def rate(self, t: Array) -> Array | float:
        """η·f(t): the learning rate of step t (a 0-d array; η itself when constant)."""
        return self.lr if self.schedule.is_constant else self.lr * self.schedule.factor(t)

    def init(self, params: list[Array]) -> State:
        """t = 0 and zeros like each parameter for every list in STATE."""
        xp = array_namespace(*params)
        state: State = {"t": xp.zeros((), dtype=params[0].dtype, device=device(params[0]))}
        for name in self.STATE:
            state[name] = [xp.zeros_like(p) for p in params]
        return state

    def update(self, params: list[Array], grads: list[Array], state: State
               ) -> tuple[list[Array], State]:
        t = state["t"] + 1
        lr = self.rate(t)
        new = [p - lr * _with_decay(p, g, self.weight_decay) for p, g in zip(params, grads)]
        return new, {"t": t}


class Momentum(SGD):
    """v ← μ·v + g;  θ ← θ - η·v  (heavy-ball momentum)

    `fused_update(p, g, v, lr, momentum, decay, nesterov) -> (p, v)`, when given, does one
    parameter's whole update at once (NumPy's, through out=); decay is the L2 λ for weight
    matrices, 0 for biases. The default is the Array API update below.
    """

    STATE = ("velocity",)
    NESTEROV = False

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 schedule: Schedule = CONSTANT,
                 fused_update: Callable[..., tuple[Array, Array]] | None = None) -> None:
        super().__init__(lr, weight_decay, schedule)
        self.momentum, self.fused_update = momentum, fused_update

    def update(self, params: list[Array], grads: list[Array], state: State
               ) -> tuple[list[Array], State]:
        t = state["t"] + 1
        lr = self.rate(t)
        if self.fused_update is not None:
            updated = [self.fused_update(p, g, v, lr, self.momentum,
                                         self.weight_decay if p.ndim == 2 else 0.0,
                                         self.NESTEROV)
                       for p, g, v in zip(params, grads, state["velocity"])]
            new, velocity = (list(column) for column in zip(*updated))
            return new, {"t": t, "velocity": velocity}
        grads = [_with_decay(p, g, self.weight_decay) for p, g in zip(params, grads)]
        velocity = [self.momentum * v + g for g, v in zip(grads, state["velocity"])]
        new = [p - lr * self.direction(g, v) for p, g, v in zip(params, grads, velocity)]
        return new, {"t": t, "velocity": velocity}

    def direction(self, g: Array, v: Array) -> Array:
        return v


class Nesterov(Momentum):
    """v ← μ·v + g;  θ ← θ - η·(g + μ·v)  (Nesterov's momentum, in the form of Sutskever et
    al. 2013 that PyTorch and Keras use: the step looks ahead along the new velocity)"""

    NESTEROV = True

    def direction(self, g: Array, v: Array) -> Array:
        return g + self.momentum * v


class Adam(SGD):
    """Adam (Kingma & Ba) with step-dependent bias correction, t = 1, 2, ...:

    m ← β₁m + (1-β₁)g    v ← β₂v + (1-β₂)g²    θ ← θ - η·m̂ / (√v̂ + ε)
    m̂ = m / (1-β₁ᵗ)      v̂ = v / (1-β₂ᵗ)

    `fused_update(p, g, m, v, step_size, beta1, beta2, eps_hat, decay) -> (p, m, v)`, when
    given, does one parameter's whole update in one kernel (CuPy's); decay is the L2 λ for
    weight matrices, 0 for biases. The default is the Array API update below.
    """

    STATE = ("m", "v")

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 fused_update: Callable[..., tuple[Array, Array, Array]] | None = None,
                 schedule: Schedule = CONSTANT) -> None:
        super().__init__(lr, weight_decay, schedule)
        self.betas, self.eps, self.fused_update = betas, eps, fused_update

    def update(self, params: list[Array], grads: list[Array], state: State
               ) -> tuple[list[Array], State]:
        xp = array_namespace(*params)
        t = state["t"] + 1
        lr = self.rate(t)
        beta1, beta2 = self.betas
        correction1 = 1.0 - beta1**t  # 0-d arrays: no Python number under jax.jit
        root_correction2 = xp.sqrt(1.0 - beta2**t)
        if self.fused_update is not None:
            # η·m̂/(√v̂ + ε) = (η√(1-β₂ᵗ)/(1-β₁ᵗ))·m/(√v + ε√(1-β₂ᵗ))
            step_size = lr * root_correction2 / correction1
            eps_hat = self.eps * root_correction2
            updated = [self.fused_update(p, g, m, v, step_size, beta1, beta2, eps_hat,
                                         self.weight_decay if p.ndim == 2 else 0.0)
                       for p, g, m, v in zip(params, grads, state["m"], state["v"])]
            new, ms, vs = (list(column) for column in zip(*updated))
            return new, {"t": t, "m": ms, "v": vs}
        new, ms, vs = [], [], []
        for p, g, m, v in zip(params, grads, state["m"], state["v"]):
            g = _with_decay(p, g, self.weight_decay)
            m = beta1 * m + (1.0 - beta1) * g
            v = beta2 * v + (1.0 - beta2) * (g * g)
            # η·m̂/(√v̂ + ε) with m̂ = m/(1-β₁ᵗ), √v̂ = √v/√(1-β₂ᵗ)
            new.append(p - (lr / correction1) * m / (xp.sqrt(v) / root_correction2
                                                          + self.eps))
            ms.append(m)
            vs.append(v)
        return new, {"t": t, "m": ms, "v": vs}


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adam": Adam}


def make_optimizer(name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                   fused: Any = None, schedule: Schedule = CONSTANT) -> SGD:
    """The optimizer `name`. `fused` (a Tail) lends its adam_update to Adam and its
    momentum_update to momentum and Nesterov where it has them."""
    if name in ("momentum", "nesterov"):
        return OPTIMIZERS[name](lr, momentum=momentum, weight_decay=weight_decay,
                                schedule=schedule,
                                fused_update=getattr(fused, "momentum_update", None))
    if name == "adam":
        return Adam(lr, weight_decay=weight_decay,
                    fused_update=getattr(fused, "adam_update", None), schedule=schedule)
    return OPTIMIZERS[name](lr, weight_decay=weight_decay, schedule=schedule)
