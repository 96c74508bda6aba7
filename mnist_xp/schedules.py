"""Learning-rate schedules: the rate of step t (t = 1, 2, ..., the optimizer state's own count)
is η·f(t), computed from that count with xp operations, so that a compiled step (JAX) follows
it and a resumed run, whose checkpoint holds t, goes on exactly where it stopped.

    constant  f(t) = 1
    cosine    f(t) = ½·(1 + cos(π·(t - 1 - W) / (T - W)))   for t > W: from 1 down towards 0
    step      f(t) = 1, then 0.1 past half the run, 0.01 past three quarters

each times a linear warm-up over the first W steps, min(1, t / W); T is the run's length in
steps (its total, resume included).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import array_namespace

SCHEDULES = ("constant", "cosine", "step")


class Schedule(NamedTuple):
    """A schedule of the learning rate's factor f(t) (see the module's docstring)."""

    kind: str = "constant"
    warmup: int = 0  # W: steps of linear warm-up
    total: int = 1  # T: the run's length in steps

    def factor(self, t: Any) -> Any:
        """f(t) for a 0-d array t (the optimizer's count after this step's increment)."""
        xp = array_namespace(t)
        f = xp.ones_like(t)
        if self.warmup:
            f = xp.minimum(t / self.warmup, f)
        if self.kind == "cosine":
            span = max(self.total - self.warmup, 1)
            progress = xp.minimum(xp.maximum((t - 1 - self.warmup) / span, xp.zeros_like(t)),
                                  xp.ones_like(t))
            f = f * (0.5 * (1.0 + xp.cos(math.pi * progress)))
        elif self.kind == "step":
            passed = (xp.astype(t > 0.5 * self.total, t.dtype)
                      + xp.astype(t > 0.75 * self.total, t.dtype))
            f = f * xp.pow(xp.full_like(t, 0.1), passed)
        return f

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant" and not self.warmup

    def describe(self) -> str:
        """'cosine decay after a 100-step warm-up', or '' for a constant rate."""
        if self.is_constant:
            return ""
        decay = {"constant": "", "cosine": "cosine decay", "step": "step decay"}[self.kind]
        warm = f"{self.warmup}-step warm-up" if self.warmup else ""
        return " after a ".join(part for part in (decay, warm) if part) if decay else warm


CONSTANT = Schedule()  # η at every step
