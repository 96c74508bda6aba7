"""matplotlib (extra `plot`) on its file-only backend, and atomic PNG writes of its figures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .errors import UsageError
from .files import atomic_write


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend; a usage error naming the extra when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError('this needs matplotlib: pip install "mnist-xp[plot]"') from None
    return plt


def save_png(figure: Any, path: Path, dpi: int = 100) -> None:
    """Render the figure, write it atomically, and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
