"""One job per input kind: how its inputs are read, checked and explained.

run.py drives any job the same way; a job owns its model, preprocessing and baselines.
"""
from __future__ import annotations

from ..config import Config
from .common import Job


def make_job(config: Config) -> Job:
    """Load the model and resolve everything the config's input kind needs, before any input."""
    if config.input.kind == "text":
        from .text_job import TextJob

        return TextJob(config)
    from .image_job import ImageJob

    return ImageJob(config)
