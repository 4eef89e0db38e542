"""A run's totals and its manifest: what manifest.json and the summary line say."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from igcli import __version__
from igcli.config import Config, resolved
from igcli.pipeline.common import BASELINE_WARNING, Job
from igcli.results.distributions import MetricTotals


@dataclass
class RunSummary:
    """Totals of a run; ``failed`` > 0 means exit code 1."""

    inputs: int = 0
    failed: int = 0
    records: int = 0
    reused: int = 0  # records kept from an earlier run by --resume
    not_converged: int = 0  # records whose converged is false (exit 1 with --strict)
    at_max_steps: int = 0  # of those, records whose rule stopped at max_steps
    max_rel_error: float = 0.0
    steps_total: int = 0  # over records, as a sum: a summary holds the same few numbers after any number of inputs
    steps_max: int | None = None
    baseline_warnings: int = 0
    seconds: float = 0.0
    compute_seconds: float = 0.0  # wall time from the first input explained to the last: the records' seconds sum to it
    stopped: str | None = None  # why the run ended before its last input
    signal: int | None = None  # the signal that stopped it (exit code 128 + signal)
    metrics: MetricTotals = field(default_factory=MetricTotals)  # the records' metrics, when configured

    def failed_late(self, records: int) -> None:
        """One input's ``records``, counted as written, failed as their files were written."""
        self.failed += 1
        self.records -= records

    def add(self, record: dict[str, Any]) -> None:
        """Count one written record; an input's first record counts the input."""
        if record.get("error") is not None:
            self.inputs += 1
            self.failed += 1
            return
        self.inputs += record["target"]["rank"] in (None, 1)
        self.records += 1
        self.steps_total += record["steps"]
        self.steps_max = max(self.steps_max or 0, record["steps"])
        self.not_converged += not record["completeness"]["converged"]
        self.at_max_steps += record.get("stopped_by") == "max_steps"
        self.baseline_warnings += any(w.startswith(BASELINE_WARNING) for w in record["warnings"])
        if record["completeness"]["rel_error"] is not None:
            self.max_rel_error = max(self.max_rel_error, record["completeness"]["rel_error"])
        self.metrics.add(record.get("metrics"))

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs, "failed": self.failed, "records": self.records, "reused": self.reused,
            "not_converged": self.not_converged, "at_max_steps": self.at_max_steps, "max_rel_error": self.max_rel_error,
            "mean_steps": self.steps_total / self.records if self.records else None,
            "max_steps": self.steps_max,
            "baseline_warnings": self.baseline_warnings, "seconds": round(self.seconds, 3),
            "compute_seconds": round(self.compute_seconds, 3),
            "stopped": self.stopped,
        } | self.metrics.to_json()


def manifest(config: Config, job: Job, summary: RunSummary, started: datetime, state: str) -> dict[str, Any]:
    """The run's manifest; ``state``: running, complete, stopped, interrupted or failed."""
    return {
        "igcli": __version__,
        "state": state,
        "started": started.isoformat(timespec="seconds"),
        "finished": None if state == "running" else datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(job.device),
        "runtime": job.runtime,
        "versions": versions(),
        "config": resolved(config),
        "totals": summary.to_json(),
    }


def versions() -> dict[str, str]:
    import PIL

    return {"igcli": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__}
