"""Console logging of simuq's commands and stages."""

from __future__ import annotations

import logging

__all__ = ["setup_logging"]


def setup_logging() -> None:
    """INFO for simuq's own loggers only (JAX's INFO chatter stays off)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger("simuq")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
