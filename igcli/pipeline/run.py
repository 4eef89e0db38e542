"""The one place that wires the stages: inputs -> job (baselines, engine) -> outputs."""
from __future__ import annotations

import functools
import logging
import signal
import time
from contextlib import closing, nullcontext
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from igcli.config import Config, TopK
from igcli.data.discover import InputRef, discover_inputs, in_shard
from igcli.data.prefetch import prefetched, read_ahead
from igcli.errors import IgcliError, UsageError
from igcli.pipeline.chunks import chunks
from igcli.pipeline.common import AnySample, Job
from igcli.pipeline.jobs import make_job
from igcli.pipeline.lock import OutputLock
from igcli.pipeline.overlap import ordered_map, own_stream, threads_shared
from igcli.pipeline.resume import ChunkReuse, PreviousRun, record_key, run_key
from igcli.pipeline.stop import StopNow, StopRequest, stop_on_signals
from igcli.pipeline.summary import RunSummary, manifest
from igcli.results.atomic_files import remove_leftovers
from igcli.results.earlier_run import check_output_folder
from igcli.results.naming import OutputNames
from igcli.results.parquet import require_parquet
from igcli.results.publish import staged_output
from igcli.results.records import Attribution, Failure
from igcli.results.store import OutputStore
from igcli.results.writer import RunWriter
from igcli.runtime.options import RuntimeOptions

log = logging.getLogger("igcli")


def explain_inputs(
    config: Config, specs: Sequence[str], out_dir: Path | OutputStore | None, jsonl: str | None = None,
    progress: bool = False,
    show=None, shard: tuple[int, int] | None = None, max_errors: int | None = None, resume: bool = False,
    options: RuntimeOptions = RuntimeOptions(), job: Job | None = None,
    workers=None,
) -> RunSummary:
    """Explain every input found from ``specs`` and write the outputs; returns the totals.

    ``shard`` (index, count) keeps a stable slice of the inputs; ``max_errors`` stops the run once
    more inputs than that have failed (0: at the first), keeping everything written so far;
    ``resume`` reuses the records already in ``out_dir`` whose key still matches (see pipeline/resume.py).
    ``options`` say how the run uses the machine; ``job`` is one made already for ``config`` (else
    the model is loaded here). SIGINT/SIGTERM finish the inputs in flight, write the manifest and set
    ``signal``.
    ``workers`` (a pipeline/workers.py WorkerPlan, or None: this process) explains the chunks.
    An ``out_dir`` in a store is written as a local staging folder mirrored there (results/publish.py).
    """
    if out_dir is None and jsonl is None:
        raise UsageError("nowhere to write: give -o OUT_DIR and/or --jsonl PATH (or - for stdout)")
    if resume and out_dir is None:
        raise UsageError("--resume reuses the records in an output folder: give -o OUT_DIR")
    if config.output.format == "parquet":
        require_parquet(out_dir)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    job = job or make_job(config, options)
    refs = _input_refs(config, specs, shard, out_dir if isinstance(out_dir, Path) else None)
    if isinstance(out_dir, Path):
        check_output_folder(out_dir)
    with staged_output(out_dir, resume) as out_dir, \
            OutputLock(out_dir) if out_dir is not None else nullcontext(), \
            workers.start(config, job) if workers is not None else nullcontext() as pool:
        # Read before the writer truncates results.jsonl.
        previous = PreviousRun.load(out_dir) if resume else PreviousRun()
        if resume and out_dir.is_dir() and (removed := remove_leftovers(out_dir)):
            log.info("removed %d temporary file(s) left by an interrupted run", removed)
        writer = RunWriter(out_dir, config.output, jsonl, show, options.writer_threads, options.manifest_every)
        summary = RunSummary()
        writer.on_failed_late = summary.failed_late
        status = functools.partial(manifest, config, job, summary, started)
        _run(job, config, refs, ChunkReuse(previous, run_key(config)), writer, summary, status, progress,
             max_errors, clock, options, pool)
    if summary.baseline_warnings:
        log.warning("%d record(s) have a baseline that is not uninformative; see their 'warnings'",
                    summary.baseline_warnings)
    return summary


def _run(job: Job, config: Config, refs: Iterator[InputRef], reuse: ChunkReuse, writer: RunWriter,
         summary: RunSummary, status: Callable[[str], dict], progress: bool, max_errors: int | None, clock: float,
         options: RuntimeOptions, pool=None) -> None:
    """Explain and write every input, then the manifest and report, whatever stops the run."""
    state = "failed"
    try:
        writer.start(status("running"))
        names = OutputNames(config.output, isinstance(config.target, TopK), config.regions is not None)
        with stop_on_signals() as stop:
            _explain_chunks(job, refs, names, reuse, writer, summary, status, progress, stop, max_errors, options,
                            pool)
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


def _explain_chunks(job: Job, refs: Iterator[InputRef], names: OutputNames, reuse: ChunkReuse, writer: RunWriter,
                    summary: RunSummary, status: Callable[[str], dict], progress: bool, stop: StopRequest,
                    max_errors: int | None, options: RuntimeOptions, pool=None) -> None:
    in_flight = job.in_flight
    with tqdm(desc="explain", unit="input", disable=not progress) as bar, threads_shared(in_flight, job.device):
        depth = read_ahead(job.chunk_size, options.read_ahead)
        samples = _named(prefetched(job.read(refs), depth), names, max_errors)
        cut = _checking_first(chunks(samples, job.chunk_size, in_flight), job)
        work = functools.partial(_chunk_outcome, job, reuse, in_flight > 1)
        mark = time.perf_counter()
        outcomes = pool.outcomes(cut, reuse) if pool is not None else ordered_map(work, cut, in_flight)
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
    writer.end_chunk()
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


def _chunk_outcome(job: Job, reuse: ChunkReuse, own_stream_needed: bool, chunk: list[AnySample | Failure]):
    """(previous record lines, None) for a chunk --resume reuses, else (None, its records)."""
    reused = reuse.lines(chunk)
    if reused is not None:
        return reused, None
    with own_stream(job.device) if own_stream_needed else nullcontext():
        return None, _explain_chunk(chunk, job, reuse.run)


def _explain_chunk(chunk: list[AnySample | Failure], job: Job, run: str) -> list[list[Attribution | Failure]]:
    """Per item of the chunk, its records (a Failure stands for itself), keyed for --resume."""
    samples = [item for item in chunk if not isinstance(item, Failure)]
    explained = iter(job.explain_samples(samples)) if samples else iter(())
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
