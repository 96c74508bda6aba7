"""How long the rest of a run will take: the median of a few steps' times (the first step of a
run pays one-off costs such as compiling, so it is not one of them), with the evaluations left
counted at what one costs; said again once, refreshed, if the run so far proves it far off.
"""

from __future__ import annotations

import statistics
from typing import NamedTuple

TIMED = 5  # steps after a run's first whose median is the time per step
OFF = 1.5  # a first estimate off by this factor, either way, is said again


class Estimate(NamedTuple):
    """What the rest of a run will take."""

    seconds_per_step: float
    steps_timed: int
    evaluation_seconds: float
    steps_left: int
    evaluations_left: int
    refreshed: bool = False

    @property
    def seconds_left(self) -> float:
        return (self.seconds_per_step * self.steps_left
                + self.evaluation_seconds * self.evaluations_left)

    def line(self) -> str:
        """`pace: 70.6 ms per step (median of 5), 40 ms per evaluation; the 493 steps and 10
        evaluations left take about 35 s`."""
        total = self.seconds_left
        left = f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"
        how = (f"the run so far: {_time(self.seconds_per_step)} per step" if self.refreshed else
               f"{_time(self.seconds_per_step)} per step (median of {self.steps_timed})")
        return (f"pace{', refreshed' if self.refreshed else ''}: {how}, "
                f"{_time(self.evaluation_seconds)} per evaluation; the "
                f"{_count(self.steps_left, 'step')} and "
                f"{_count(self.evaluations_left, 'evaluation')} left take about {left}")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def evaluations_between(done: int, total: int, every: int) -> int:
    """Evaluations at the steps after `done` up to `total`: every `every` steps, and the last."""
    if done >= total:
        return 0
    return total // every - done // every + (1 if total % every else 0)


class Pace:
    """The pace of a run from step `first` to `total`, evaluating every `every` steps."""

    def __init__(self, first: int, total: int, every: int) -> None:
        self.first, self.total, self.every = first, total, every
        self.last_timed = min(total, first + TIMED) if total > first else first
        self.times: list[float] = []
        self.said: Estimate | None = None
        self.said_at = (0, 0.0)  # the step and the clock when it was said
        self.refreshed = False

    def times_step(self, step: int) -> bool:
        """Whether this step is one of those timed (waited for, then timed)."""
        return (self.first < step <= self.last_timed) or self.last_timed == self.first == step

    def timed(self, step: int, seconds: float, evaluation_seconds: float, now: float
              ) -> Estimate | None:
        """Record a timed step; after the last of them, the estimate to say."""
        self.times.append(seconds)
        if step != self.last_timed:
            return None
        self.said = Estimate(statistics.median(self.times), len(self.times), evaluation_seconds,
                             self.total - step, evaluations_between(step, self.total, self.every))
        self.said_at = (step, now)
        return self.said

    def check(self, step: int, now: float) -> Estimate | None:
        """At an evaluation after the estimate was said: once, a refreshed estimate when the
        run since has taken OFF times more or less than it said."""
        if self.said is None or self.refreshed or step >= self.total:
            return None
        since, then = step - self.said_at[0], self.said_at[1]
        if since < TIMED:
            return None
        expected = (self.said.seconds_per_step * since + self.said.evaluation_seconds
                    * evaluations_between(self.said_at[0], step, self.every))
        actual = now - then
        if expected <= 0 or 1 / OFF <= actual / expected <= OFF:
            return None
        self.refreshed = True
        evaluations = evaluations_between(self.said_at[0], step, self.every)
        per_step = max(actual - self.said.evaluation_seconds * evaluations, 0.0) / since
        return Estimate(per_step, since, self.said.evaluation_seconds, self.total - step,
                        evaluations_between(step, self.total, self.every), refreshed=True)
