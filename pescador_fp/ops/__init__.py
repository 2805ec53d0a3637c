"""Operators, one family per module; the public names are re-exported by ``pescador_fp``."""
