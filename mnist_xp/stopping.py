"""How a command stops: the first Ctrl-C (SIGINT) or SIGTERM (what `timeout`, Slurm, Kubernetes
and `docker stop` send) asks training to stop after the current step, which then writes its
checkpoint; a second one stops at once (Abort)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Abort(BaseException):
    """A second Ctrl-C or SIGTERM: stop at once, without the checkpoint."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], str | None]]:
    """Within the block, once training has asked whether to stop (after its first step), the
    first Ctrl-C or SIGTERM is a request to stop after the step (said on stderr); the command
    then exits 128 + the signal's number (130, 143). A second one, or one while the run is
    still setting up (placing the data, compiling), raises Abort: nothing is lost there.
    Yields a function naming the signal that asked ("Ctrl-C", "SIGTERM"), or None."""
    requested: list[int] = []
    training: list[bool] = []  # asked once: the steps have begun

    def handler(signum: int, frame: Any) -> None:
        if requested or not training:  # a second signal, or one before any step: at once
            raise Abort(signum)
        requested.append(signum)
        name = signal_name(signum)
        print(f"\n{name}: stopping after this step ({name} again to stop at once)",
              file=sys.stderr)

    def asked() -> str | None:
        training.append(True)
        return signal_name(requested[0]) if requested else None

    if threading.current_thread() is not threading.main_thread():
        yield asked
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, action in previous.items():
            signal.signal(s, action)
