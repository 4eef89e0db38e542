"""The one place that wires the stages: inputs -> job (baselines, engine) -> outputs."""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain, islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .config import Config, resolved
from .errors import UsageError
from .inputs.discover import discover_inputs, in_shard
from .jobs import make_job
from .jobs.common import AnySample, Job
from .outputs.writer import RunWriter
from .records import Attribution, Failure

log = logging.getLogger("igcli")


@dataclass
class RunSummary:
    """Totals of a run; ``failed`` > 0 means exit code 1."""

    inputs: int = 0
    failed: int = 0
    records: int = 0
    not_converged: int = 0
    max_rel_error: float = 0.0
    steps: list[int] = field(default_factory=list)
    baseline_warnings: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # why the run ended before its last input

    def add(self, result: Attribution | Failure) -> None:
        """Count one result; an input's first result counts the input."""
        if isinstance(result, Failure):
            self.inputs += 1
            self.failed += 1
            return
        self.inputs += result.rank in (None, 1)
        self.records += 1
        self.steps.append(result.steps)
        self.not_converged += not result.converged
        self.baseline_warnings += bool(result.warnings)
        if result.rel_error is not None:
            self.max_rel_error = max(self.max_rel_error, result.rel_error)

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs, "failed": self.failed, "records": self.records,
            "not_converged": self.not_converged, "max_rel_error": self.max_rel_error,
            "mean_steps": float(np.mean(self.steps)) if self.steps else None,
            "max_steps": max(self.steps) if self.steps else None,
            "baseline_warnings": self.baseline_warnings, "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
        }


def explain_inputs(
    config: Config, specs: Sequence[str], out_dir: Path | None, jsonl: str | None = None, progress: bool = False,
    show=None, shard: tuple[int, int] | None = None, max_errors: int | None = None,
) -> RunSummary:
    """Explain every input found from ``specs`` and write the outputs; returns the totals.

    ``shard`` (index, count) keeps a stable slice of the inputs; ``max_errors`` stops the run once
    more inputs than that have failed (0: at the first), keeping everything written so far.
    """
    if out_dir is None and jsonl is None:
        raise UsageError("nowhere to write: give -o OUT_DIR and/or --jsonl PATH (or - for stdout)")
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    job = make_job(config)
    suffixes = config.input.suffixes()
    refs = discover_inputs(specs, suffixes)
    if shard is not None:
        refs = (ref for ref in refs if in_shard(ref, *shard))
    first = next(refs, None)
    if first is None:
        raise UsageError(f"no inputs found in {', '.join(specs)} (extensions: {' '.join(suffixes)})")
    writer = RunWriter(out_dir, config.output, jsonl, show)
    summary = RunSummary()
    checked = False
    with tqdm(desc="explain", unit="input", disable=not progress) as bar:
        for chunk in _chunks(job.read(chain([first], refs)), job.chunk_size):
            samples = [item for item in chunk if not isinstance(item, Failure)]
            if samples and not checked:
                job.check(samples[0])
                checked = True
            for result in _explain_chunk(chunk, job):
                _write(result, writer, summary)
            bar.update(len(chunk))
            if max_errors is not None and summary.failed > max_errors:
                summary.stopped = f"stopped after {summary.failed} failed input(s) (--max-errors {max_errors})"
                log.error("%s", summary.stopped)
                break
    if summary.baseline_warnings:
        log.warning("%d record(s) have a baseline that is not uninformative; see their 'warnings'",
                    summary.baseline_warnings)
    summary.seconds = time.perf_counter() - clock
    writer.finish(manifest(config, job, summary, started))
    return summary


def _chunks(items: Iterable[AnySample | Failure], size: int) -> Iterator[list[AnySample | Failure]]:
    """Lists of ``size`` items, Failures riding along so that outputs keep the inputs' order."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _explain_chunk(chunk: list[AnySample | Failure], job: Job) -> list[Attribution | Failure]:
    samples = [item for item in chunk if not isinstance(item, Failure)]
    explained = iter(job.explain(samples)) if samples else iter(())
    results: list[Attribution | Failure] = []
    for item in chunk:
        results.extend([item] if isinstance(item, Failure) else next(explained))
    return results


def _write(result: Attribution | Failure, writer: RunWriter, summary: RunSummary) -> None:
    if isinstance(result, Failure):
        log.warning("%s", result.message)
        writer.write_failure(result)
    else:
        writer.write(result)
    summary.add(result)


def manifest(config: Config, job: Job, summary: RunSummary, started: datetime) -> dict[str, Any]:
    return {
        "igcli": __version__,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(job.device),
        "versions": versions(),
        "config": resolved(config),
        "totals": summary.to_json(),
    }


def versions() -> dict[str, str]:
    import PIL

    return {"igcli": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__}
