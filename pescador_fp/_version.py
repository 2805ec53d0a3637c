"""The version of pescador_fp: its one home (``pyproject.toml`` reads it, ``pf.__version__`` is it)."""

__version__ = "0.1.0"
