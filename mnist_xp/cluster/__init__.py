"""The cluster engine: full-batch (or mini-batch) training on a Dask cluster, data on the
workers, only parameters and gradients on the wire. engine.py runs here, worker.py on the
workers, connect.py starts a LocalCluster or joins a running scheduler."""

from .connect import Credentials, start
from .engine import ClusterEngine, ClusterError, Traffic

__all__ = ["ClusterEngine", "ClusterError", "Credentials", "Traffic", "start"]
