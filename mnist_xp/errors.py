"""The project's exceptions. Each carries the exit status the CLI returns for it."""


class MnistXpError(Exception):
    """Base class: a failure the user can act on, reported in one line."""

    exit_code = 1


class UsageError(MnistXpError, ValueError):
    """A bad argument or option combination (exit 2)."""

    exit_code = 2


class BackendError(MnistXpError):
    """The requested device cannot be used: missing CuPy, no GPU, no driver (exit 2)."""

    exit_code = 2


class DataError(MnistXpError):
    """A data file is missing, malformed or fails its checksum (exit 1)."""


class DownloadError(DataError):
    """Every mirror failed; the message lists the URLs tried and the manual fix (exit 2)."""

    exit_code = 2


class DivergenceError(MnistXpError):
    """The training loss became NaN or infinite (exit 1)."""


class DeviceMemoryError(MnistXpError):
    """The device ran out of memory; the message gives the estimate and the flag to use (exit 1)."""


class LostWork(MnistXpError):
    """The backend lost work it could not redo, e.g. a cluster's workers died (exit 1)."""


class Interrupted(MnistXpError):
    """Training was stopped by a signal: Ctrl-C (SIGINT, exit 130) or SIGTERM (143); the
    message says where the checkpoint is, or that nothing was saved."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
