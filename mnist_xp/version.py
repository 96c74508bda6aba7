"""The package version, in a module of its own so that any module can name it without
importing the package (and pyproject.toml reads it without importing anything)."""

__version__ = "0.1.0"
