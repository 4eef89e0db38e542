"""The one place that wires the stages: inputs -> job (baselines, engine) -> outputs."""
from __future__ import annotations

import functools
import hashlib
import logging
import platform
import signal
import threading
import time
from collections import deque
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import chain, islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from igcli import __version__
from igcli.results.atomic_files import remove_leftovers
from igcli.config import Config, TopK, resolved
from igcli.errors import IgcliError, UsageError
from igcli.data.discover import InputRef, discover_inputs, in_shard
from igcli.data.prefetch import prefetched, read_ahead
from igcli.pipeline.jobs import make_job
from igcli.pipeline.common import BASELINE_WARNING, AnySample, Job
from igcli.pipeline.lock import OutputLock
from igcli.results.naming import OutputNames
from igcli.results.writer import RunWriter
from igcli.pipeline.overlap import ordered_map, own_stream, threads_shared
from igcli.results.records import Attribution, Failure
from igcli.pipeline.resume import PreviousRun, record_key, run_key

log = logging.getLogger("igcli")


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

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs, "failed": self.failed, "records": self.records, "reused": self.reused,
            "not_converged": self.not_converged, "at_max_steps": self.at_max_steps, "max_rel_error": self.max_rel_error,
            "mean_steps": self.steps_total / self.records if self.records else None,
            "max_steps": self.steps_max,
            "baseline_warnings": self.baseline_warnings, "seconds": round(self.seconds, 3),
            "compute_seconds": round(self.compute_seconds, 3),
            "stopped": self.stopped,
        }


def explain_inputs(
    config: Config, specs: Sequence[str], out_dir: Path | None, jsonl: str | None = None, progress: bool = False,
    show=None, shard: tuple[int, int] | None = None, max_errors: int | None = None, resume: bool = False,
    workers=None,
) -> RunSummary:
    """Explain every input found from ``specs`` and write the outputs; returns the totals.

    ``shard`` (index, count) keeps a stable slice of the inputs; ``max_errors`` stops the run once
    more inputs than that have failed (0: at the first), keeping everything written so far;
    ``resume`` reuses the records already in ``out_dir`` whose key still matches (see pipeline/resume.py).
    SIGINT/SIGTERM finish the inputs in flight, write the manifest and set ``signal``.
    ``workers`` (a pipeline/workers.py WorkerPlan, or None: this process) explains the chunks.
    """
    if out_dir is None and jsonl is None:
        raise UsageError("nowhere to write: give -o OUT_DIR and/or --jsonl PATH (or - for stdout)")
    if resume and out_dir is None:
        raise UsageError("--resume reuses the records in an output folder: give -o OUT_DIR")
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    job = make_job(config)
    refs = _input_refs(config, specs, shard, out_dir)
    with OutputLock(out_dir) if out_dir is not None else nullcontext(), \
            workers.start(config, job) if workers is not None else nullcontext() as pool:
        # Read before the writer truncates results.jsonl.
        previous = PreviousRun.load(out_dir) if resume else PreviousRun()
        if resume and out_dir.is_dir() and (removed := remove_leftovers(out_dir)):
            log.info("removed %d temporary file(s) left by an interrupted run", removed)
        writer = RunWriter(out_dir, config.output, jsonl, show)
        summary = RunSummary()
        status = functools.partial(manifest, config, job, summary, started)
        _run(job, config, refs, previous, writer, summary, status, progress, max_errors, clock, pool)
    if summary.baseline_warnings:
        log.warning("%d record(s) have a baseline that is not uninformative; see their 'warnings'",
                    summary.baseline_warnings)
    return summary


def _run(job: Job, config: Config, refs: Iterator[InputRef], previous: PreviousRun, writer: RunWriter,
         summary: RunSummary, status, progress: bool, max_errors: int | None, clock: float, pool=None) -> None:
    """Explain and write every input, then the manifest and report, whatever stops the run."""
    state = "failed"
    try:
        writer.start(status("running"))
        names = OutputNames(config.output, isinstance(config.target, TopK))
        with _stop_on_signals() as stop:
            _explain_chunks(job, refs, names, _Reuse(previous, run_key(config)), writer, summary, status, progress,
                            stop, max_errors, pool)
            writer.drain()
        state = "interrupted" if summary.signal else "stopped" if summary.stopped else "complete"
    except StopNow as error:
        summary.stopped, summary.signal = "interrupted at once by a second signal", error.signum
        state = "interrupted"
        raise
    except KeyboardInterrupt:
        summary.stopped, summary.signal = "interrupted at once", signal.SIGINT
        state = "interrupted"
        raise
    except IgcliError as error:
        summary.stopped = str(error)
        raise
    finally:
        summary.seconds = time.perf_counter() - clock
        writer.finish(status(state))


def _input_refs(config: Config, specs: Sequence[str], shard: tuple[int, int] | None,
                out_dir: Path | None) -> Iterator[InputRef]:
    """The inputs (of ``shard``), streamed; UsageError when the specs name none at all. A shard
    that happens to hold none of them is an empty run, not an error: array jobs size shards blind."""
    suffixes = config.input.suffixes()
    found = discover_inputs(specs, suffixes, exclude=out_dir)
    first = next(found, None)
    if first is None:
        raise UsageError(f"no inputs found in {', '.join(map(str, specs))} (extensions: {' '.join(suffixes)})")
    refs = chain([first], found)
    if shard is None:
        return refs
    in_this = (ref for ref in refs if in_shard(ref, *shard))
    first = next(in_this, None)
    if first is None:
        log.warning("shard %d/%d holds none of the inputs; writing an empty, complete output", *shard)
        return iter(())
    return chain([first], in_this)


def _explain_chunks(job: Job, refs: Iterator[InputRef], names: OutputNames, reuse: _Reuse, writer: RunWriter,
                    summary: RunSummary, status, progress: bool, stop: _StopRequest, max_errors: int | None,
                    pool=None) -> None:
    in_flight = job.in_flight
    with tqdm(desc="explain", unit="input", disable=not progress) as bar, threads_shared(in_flight, job.device):
        samples = _named(prefetched(job.read(refs), read_ahead(job.chunk_size)), names, max_errors)
        chunks = _checking_first(_chunks(samples, job.chunk_size, in_flight), job)
        work = functools.partial(_chunk_outcome, job, reuse, in_flight > 1)
        mark = time.perf_counter()
        outcomes = pool.outcomes(chunks, reuse) if pool is not None else ordered_map(work, chunks, in_flight)
        with closing(outcomes):
            for chunk, (reused, groups) in outcomes:
                now = time.perf_counter()
                if groups is not None:
                    summary.compute_seconds += _share_wall_time(groups, now - mark)
                mark = now
                bar.update(_write_chunk(writer, summary, reused, groups, max_errors))
                if stop.signum is not None:
                    summary.signal = stop.signum
                    summary.stopped = f"interrupted by {signal.Signals(stop.signum).name}"
                    break
                if max_errors is not None and summary.failed > max_errors:
                    summary.stopped = f"stopped after {summary.failed} failed input(s) (--max-errors {max_errors})"
                    log.error("%s", summary.stopped)
                    break
                writer.update_manifest(lambda: status("running"))


def _named(items: Iterator[AnySample | Failure], names: OutputNames,
           max_errors: int | None) -> Iterator[AnySample | Failure]:
    """Each sample with output names of its own (OutputNames.claim); a Failure claims none, so a
    failed a.jpg does not rename a.png. Past ``max_errors`` failed reads nothing more is read: the
    run stops at that input (see _write_chunk)."""
    failed = 0
    for item in items:
        if isinstance(item, Failure):
            failed += 1
        else:
            names.claim(item)
        yield item
        if max_errors is not None and failed > max_errors:
            return


def _share_wall_time(groups: list[list[Attribution | Failure]], seconds: float) -> float:
    """Give each record of a computed chunk an equal share of ``seconds``, the wall time since the
    chunk before it came out: with chunks in flight at once, their own clocks overlap, and the
    records' seconds would sum to more than the run took. Returns the seconds given out."""
    records = [record for group in groups for record in group if isinstance(record, Attribution)]
    for record in records:
        record.seconds = seconds / len(records)
    return seconds if records else 0.0


def _write_chunk(writer: RunWriter, summary: RunSummary, reused: list[list[str]] | None,
                 groups: list[list[Attribution | Failure]] | None, max_errors: int | None = None) -> int:
    """Pass on a reused chunk's record lines, or write a computed chunk's records; count them.
    Once more than ``max_errors`` inputs have failed, the inputs after the last one are not
    written: --fail-fast stops at the first failed input, not at the end of its chunk. Returns
    the inputs written."""
    written = 0
    for lines in reused or ():
        for record in writer.write_lines(lines):
            summary.add(record)
            summary.reused += record.get("error") is None
        written += 1
    for group in groups or ():
        if max_errors is not None and summary.failed > max_errors:
            break
        for record in writer.write_group(group):
            summary.add(record)
        written += 1
    return written


def _checking_first(chunks: Iterator[list[AnySample | Failure]], job: Job) -> Iterator[list[AnySample | Failure]]:
    """The chunks as they come; before the first that holds a sample, one forward on that sample
    (job.check), so that a wrong model or shape stops the run before any work starts."""
    checked = False
    for chunk in chunks:
        if not checked:
            first = next((item for item in chunk if not isinstance(item, Failure)), None)
            if first is not None:
                job.check(first)
                checked = True
        yield chunk


def _chunk_outcome(job: Job, reuse: _Reuse, own_stream_needed: bool, chunk: list[AnySample | Failure]):
    """(previous record lines, None) for a chunk --resume reuses, else (None, its records)."""
    reused = reuse.lines(chunk)
    if reused is not None:
        return reused, None
    with own_stream(job.device) if own_stream_needed else nullcontext():
        return None, _explain_chunk(chunk, job, reuse.run)


@dataclass
class _Reuse:
    previous: PreviousRun
    run: str  # the run key

    def lines(self, chunk: list[AnySample | Failure]) -> list[list[str]] | None:
        """Every item's previous record lines, or None. A chunk is reused whole or computed whole:
        batches mix the chunk's inputs, and float results depend (in the last bits) on what else
        is in a batch, so only whole chunks reproduce an uninterrupted run byte for byte."""
        if not self.previous.lines:
            return None
        found = []
        for item in chunk:
            lines = None if isinstance(item, Failure) else self.previous.reusable(
                item.source, record_key(self.run, item.digest))
            if lines is None:
                return None
            found.append(lines)
        return found


class StopNow(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once; the exit code is 128 + ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopRequest:
    """The first SIGINT/SIGTERM asks the run to stop after the inputs in flight; a second stops it now."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum
        log.warning("%s: finishing the inputs in flight, then stopping (send it again to stop at once)",
                    signal.Signals(signum).name)


@contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may set handlers; embedding callers keep theirs
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def name_hash(relpath: str) -> int:
    """A well-mixed hash of an input's name, for chunk bounds. zlib.crc32 is linear, and its
    residues over numbered names (00001.png, 00002.png...) cluster: at 32-35 inputs a chunk,
    42% of chunks found no bound and ended at 2 * size, by position rather than by name."""
    return int.from_bytes(hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest(), "little")


def _chunks(items: Iterable[AnySample | Failure], size: int,
            in_flight: int = 1) -> Iterator[list[AnySample | Failure]]:
    """Lists of ``size`` items and up to a window more, Failures riding along so that outputs keep
    the inputs' order. Past ``size`` items, a chunk ends after an item whose name hashes to 0
    modulo a quarter of the window (content-defined chunking, ``name_hash``), so bounds follow the
    names rather than positions: after an input is added or removed the bounds fall back in step
    within a chunk or two, and --resume finds the other chunks whole (chunks are reused whole, see
    _Reuse). A chunk finds no bound in its window with probability ~e^-4, 2%, and then ends at
    its end. The window is ``size // 2`` (a whole ``size`` below 16, to keep two names or more per
    bound): the largest chunks set a run's peak memory (each chunk in flight keeps its stored
    maps' buffer at the largest it needed) and the mean sets the speed, and a window of half a
    chunk made the sample job's chunks 52 to 78 inputs, 57 on average, where size 39 and a window
    of 39 made them 39 to 78, 49 on average, at the same peak memory (benchmarks/RESULTS.md).

    Where the inputs end fewer than ``size`` items after a bound, and the chunk before it has room,
    those last items join it: a short last chunk runs every round of the adaptive rule in
    part-filled batches (a 9-input tail cost ~4% of a 240-image run on the sample CNN).

    With ``in_flight`` chunks in flight, the last chunk comes in pieces (chunks of their own) of at
    most half a chunk, and at least one per chunk in flight, so that the chunks in flight end
    within about half a chunk of each other: a last chunk left to run alone kept a core of two idle
    through it (on the sample job 6% of a 600-image run's engine time, benchmarks/RESULTS.md).
    Which chunk is last depends on the inputs alone, so a resumed run splits the same one.
    """
    window = size // 2 if size >= 16 else size
    every, cap = max(1, window // 4), size + window
    source, read_back = iter(items), deque()
    chunk: list[AnySample | Failure] = []
    while (item := read_back.popleft() if read_back else next(source, None)) is not None:
        chunk.append(item)
        boundary = len(chunk) >= size and name_hash(item.relpath) % every == 0
        if boundary or len(chunk) >= cap:
            short = min(size - 1, cap - len(chunk))  # a last chunk this short joins this one
            ahead = list(islice(source, short + 1))
            if len(ahead) <= short:
                yield from _last_pieces(chunk + ahead, size, in_flight)
                return
            yield chunk
            chunk = []
            read_back.extend(ahead)
    yield from _last_pieces(chunk, size, in_flight)


def _last_pieces(chunk: list, size: int, in_flight: int) -> Iterator[list]:
    """The last chunk, as _chunks yields it (see there)."""
    if in_flight <= 1:
        return _pieces(chunk, 1)
    return _pieces(chunk, max(in_flight, -(-2 * len(chunk) // max(1, size))))


def _pieces(chunk: list, count: int) -> Iterator[list]:
    """``chunk`` in ``count`` consecutive pieces (fewer if it has fewer items) whose sizes differ by
    one at most; none if it is empty."""
    count = min(max(1, count), len(chunk))
    first = 0
    for piece in range(count):
        end = first + len(chunk) // count + (piece < len(chunk) % count)
        yield chunk[first:end]
        first = end


def _explain_chunk(chunk: list[AnySample | Failure], job: Job, run: str) -> list[list[Attribution | Failure]]:
    """Per item of the chunk, its records (a Failure stands for itself), keyed for --resume."""
    samples = [item for item in chunk if not isinstance(item, Failure)]
    explained = iter(job.explain(samples)) if samples else iter(())
    groups: list[list[Attribution | Failure]] = []
    for item in chunk:
        group = [item] if isinstance(item, Failure) else next(explained)
        for result in group:
            if isinstance(result, Attribution):
                result.key = record_key(run, item.digest)
            else:
                log.warning("%s", result.message)
        groups.append(group)
    return groups


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
