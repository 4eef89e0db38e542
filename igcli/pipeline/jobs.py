"""One job per input kind: how its inputs are read, checked and explained.

pipeline/run.py drives any job the same way; a job owns its model, preprocessing and baselines.
"""
from __future__ import annotations

from igcli.config import Config
from igcli.pipeline.common import Job
from igcli.runtime.options import RuntimeOptions


def make_job(config: Config, options: RuntimeOptions = RuntimeOptions()) -> Job:
    """Load the model and resolve everything the config's input kind needs, before any input."""
    if config.input.kind == "text":
        from igcli.pipeline.text_job import TextJob

        return TextJob(config, options)
    from igcli.pipeline.image_job import ImageJob

    return ImageJob(config, options)
