"""Imported by the forkserver of a LocalCluster started here, and nowhere else (see
connect._prepare_forkserver): it moves that server into a process group of its own. A signal
sent to the command's process group (`timeout`'s SIGTERM) would otherwise end the server, and
multiprocessing then reports every worker it forked as exited, so their nannies let them go
and start new ones: the step in flight is redone on workers that must build their rows again.
The workers themselves move to groups of their own too (worker.OwnProcessGroup)."""

import multiprocessing.process
import os
import sys

if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules \
        and multiprocessing.process.parent_process() is None:  # the server, not a worker
    os.setpgid(0, 0)
