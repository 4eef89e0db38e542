"""Chunks explained by worker processes, one writer: ``--workers N`` and ``--device cuda:all``.

The parent reads, names and chunks the inputs exactly as a one-process run does (pipeline/run.py)
and writes every output; each worker is a spawned process with its own model, device and share of
the cores, and explains whole chunks handed to it as it becomes free. A chunk is explained with
the batch the parent's job would give it, so the records are the bytes a one-process run writes
(timings aside). A worker that dies mid-chunk is replaced, and its chunk retried once on another
worker; a chunk that kills a worker twice becomes one failure record per input. docs/scaling.md.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Iterable, Iterator

import torch

from igcli.backends.devices import require_device
from igcli.config import Config
from igcli.errors import IgcliError, UsageError
from igcli.results.records import Attribution, Failure

log = logging.getLogger("igcli")
WORKER_ERROR = "WorkerError"  # the error type of a record whose chunk killed its worker twice
_NOT_YET = "not yet"  # a worker's message that is not its chunk's answer
LOG_FORMAT = "igcli: %(levelname)s: %(message)s"  # as the parent's handler (cli/commands.py)


def parse_devices(text: str) -> list[str] | None:
    """``cuda:all`` or a comma list (``cuda:0,cuda:2``, ``cpu,cpu``) as one device per entry; None
    for a single device, which stays in the config. Raises UsageError on a malformed list and
    where a device named is not here (as ``--device cuda`` does)."""
    text = text.strip()
    if text != "cuda:all" and "," not in text:
        return None
    if text == "cuda:all":
        require_device("cuda", f"--device {text}")
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    devices = [part.strip() for part in text.split(",")]
    for device in devices:
        head, _, index = device.partition(":")
        if head not in ("cpu", "cuda") or (index and not index.isdigit()) or (head == "cpu" and index):
            raise UsageError(f"--device {text}: '{device}' is not cpu, cuda or cuda:N; "
                             "give e.g. cuda:0,cuda:2 or cuda:all")
    for device in devices:
        require_device(device, f"--device {text}")
    return devices


@dataclass(frozen=True)
class WorkerPlan:
    """Where each worker runs, and the torch threads each gets."""

    devices: tuple[str, ...]  # one entry per worker
    threads: int

    @property
    def count(self) -> int:
        return len(self.devices)

    def start(self, config: Config, job: Any) -> "LocalWorkers":
        return LocalWorkers(self, config, job)


def worker_plan(workers: int | None, devices: list[str] | None, config_device: str) -> WorkerPlan | None:
    """The plan for ``--workers`` and a ``--device`` list (parse_devices); None: this process.
    Workers go round the devices; with no list they all use ``config_device``. The cores torch
    uses are split among them."""
    if devices is None:
        if workers is None or workers <= 1:
            return None
        devices = [config_device]
    count = workers or len(devices)
    placed = tuple(devices[index % len(devices)] for index in range(count))
    if placed == (config_device,):
        return None  # one worker on the run's own device (cuda:all on a one-GPU node): run in-process
    return WorkerPlan(placed, max(1, torch.get_num_threads() // count))


@dataclass
class _Task:
    index: int
    chunk: list
    tries: int = 0
    worker: int | None = None  # the slot that last ran it


class ChunkDispatcher:
    """Hands chunks to workers as they become free and gives the outcomes back in the chunks'
    order; a worker's death costs its chunk one retry. Subclasses say how a worker is started,
    sent a chunk, waited for and replaced (local processes here, Ray actors in ray_runner.py)."""

    def __init__(self, count: int, job: Any):
        self.count, self.job = count, job

    def outcomes(self, chunks: Iterable[list], reuse: Any) -> Iterator[tuple[list, tuple[Any, Any]]]:
        """``(chunk, (reused lines, None))`` or ``(chunk, (None, records))`` in the chunks' order,
        as run.ordered_map gives them; chunks that --resume reuses never leave the parent."""
        source = enumerate(chunks)
        waiting: list[_Task] = []  # chunks read, not yet handed out (retries first)
        done: dict[int, tuple[list, tuple[Any, Any]]] = {}
        running: dict[int, _Task] = {}  # slot -> its task
        next_out, exhausted, window = 0, False, 2 * self.count
        while True:
            while not exhausted and len(waiting) + len(running) + len(done) < window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                index, chunk = item
                reused = reuse.lines(chunk)
                if reused is not None:
                    done[index] = (chunk, (reused, None))
                else:
                    waiting.append(_Task(index, chunk))
            self._hand_out(waiting, running, reuse.run)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            if exhausted and not waiting and not running:
                return
            if running:
                for slot, answer in self._answers(running):
                    self._file(slot, answer, running, waiting, done)

    def _hand_out(self, waiting: list[_Task], running: dict[int, _Task], run_key: str) -> None:
        """Give each free worker the first waiting task, a retry to a worker other than its last."""
        for slot in range(self.count):
            if slot in running or not waiting:
                continue
            task = next((t for t in waiting if t.worker != slot or self.count == 1), waiting[0])
            waiting.remove(task)
            task.worker = slot
            self._send(slot, pickle.dumps((task.chunk, self.job.batch.points, run_key),
                                          protocol=pickle.HIGHEST_PROTOCOL))
            running[slot] = task

    def _file(self, slot: int, answer: tuple[str, Any], running: dict[int, _Task], waiting: list[_Task],
              done: dict) -> None:
        """File a worker's answer: ("records", bytes), ("error", exception) or ("died", how)."""
        task = running.pop(slot)
        kind, payload = answer
        if kind == "error":
            raise payload
        if kind == "records":
            done[task.index] = (task.chunk, (None, _with_samples(pickle.loads(payload), task.chunk)))
            return
        self._replace(slot)
        task.tries += 1
        if task.tries <= 1:
            log.warning("worker %d died (%s) explaining a chunk of %d input(s) from %s; retrying it on "
                        "another worker", slot, payload, len(task.chunk), task.chunk[0].source)
            waiting.insert(0, task)
        else:
            done[task.index] = (task.chunk, (None, _crash_failures(task.chunk, payload)))

    def _send(self, slot: int, payload: bytes) -> None:
        raise NotImplementedError

    def _answers(self, running: dict[int, _Task]) -> Iterator[tuple[int, tuple[str, Any]]]:
        """Block until at least one running worker answers or dies; yield those that did."""
        raise NotImplementedError

    def _replace(self, slot: int) -> None:
        raise NotImplementedError


class LocalWorkers(ChunkDispatcher):
    """Worker processes for one run; a context manager whose exit ends them all."""

    def __init__(self, plan: WorkerPlan, config: Config, job: Any):
        super().__init__(plan.count, job)
        self.plan, self.config = plan, config
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Slot | None] = [None] * plan.count

    def __enter__(self) -> "LocalWorkers":
        for slot in range(self.plan.count):
            self._slots[slot] = self._spawn(slot)
        return self

    def __exit__(self, *exc: Any) -> None:
        for slot in self._slots:
            if slot is not None:
                slot.end()

    def _spawn(self, slot: int) -> "_Slot":
        parent, child = self._context.Pipe()
        level = logging.getLogger("igcli").getEffectiveLevel()
        process = self._context.Process(
            target=_worker_main, name=f"igcli-worker-{slot}", daemon=True,
            args=(child, self.config, self.plan.devices[slot], self.plan.threads, level))
        process.start()
        child.close()
        return _Slot(slot, process, parent)

    def _send(self, slot: int, payload: bytes) -> None:
        self._slots[slot].send(payload)

    def _answers(self, running: dict[int, _Task]) -> Iterator[tuple[int, tuple[str, Any]]]:
        by_handle = {}
        for slot in running:
            by_handle[self._slots[slot].conn] = slot
            by_handle[self._slots[slot].process.sentinel] = slot
        answered = set()
        for handle in wait(list(by_handle)):
            slot = by_handle[handle]
            if slot in answered:
                continue
            answer = self._slots[slot].receive()
            if answer == _NOT_YET:
                continue
            answered.add(slot)
            yield slot, answer if answer is not None else ("died", self._slots[slot].death())

    def _replace(self, slot: int) -> None:
        self._slots[slot].end()
        self._slots[slot] = self._spawn(slot)


class _Slot:
    """One worker process and the pipe to it."""

    def __init__(self, slot: int, process: Any, conn: Connection):
        self.slot, self.process, self.conn = slot, process, conn
        self.ready = False

    def send(self, payload: bytes) -> None:
        try:
            self.conn.send_bytes(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died: wait() sees its sentinel and the chunk is retried

    def receive(self) -> tuple[str, Any] | str | None:
        """The worker's answer for its chunk; _NOT_YET where it only said it is ready; None once it died."""
        try:
            if not self.conn.poll(0):
                return _NOT_YET if self.process.is_alive() else None
            kind, payload = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            return None
        if kind == "ready":
            self.ready = True
            return _NOT_YET
        return kind, payload

    def death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def end(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)


def _with_samples(groups: list[list[Attribution | Failure]], chunk: list) -> list[list[Attribution | Failure]]:
    """Records come back without their sample (the parent holds it): give each its own back."""
    for item, group in zip(chunk, groups):
        for record in group:
            if isinstance(record, Attribution):
                record.sample = item
    return groups


def _crash_failures(chunk: list, how: str) -> list[list[Failure]]:
    return [[item] if isinstance(item, Failure) else
            [Failure(item.source, item.relpath, WORKER_ERROR,
                     f"{item.source}: the worker explaining its chunk died twice ({how}); "
                     "rerun with --resume, with --workers 1 to see the error in-process")]
            for item in chunk]


def _worker_main(conn: Connection, config: Config, device: str, threads: int, level: int) -> None:
    """A worker: load the job on ``device``, then explain each chunk it is sent until the pipe closes."""
    # The parent decides when the run stops (pipeline/run.py); a terminal's Ctrl-C reaches the group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        explainer = ChunkExplainer(config, device, threads, level)
        conn.send_bytes(pickle.dumps(("ready", os.getpid())))
        while True:
            try:
                payload = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the parent closed the pipe or died
            conn.send_bytes(pickle.dumps(("records", explainer(payload)), protocol=pickle.HIGHEST_PROTOCOL))
    except IgcliError as error:
        _send_error(conn, error)
    except Exception as error:  # noqa: BLE001 - raised in the parent, with this process's traceback
        _send_error(conn, RuntimeError(f"worker on {device}: {type(error).__name__}: {error}\n"
                                       + traceback.format_exc()))


class ChunkExplainer:
    """A worker's job: built once on its device, then called with each chunk (pickled as
    ChunkDispatcher sends it); returns the chunk's records, pickled without their samples."""

    def __init__(self, config: Config, device: str, threads: int, level: int):
        from igcli.pipeline.jobs import make_job
        from igcli.runtime.heap import set_up_malloc

        _log_as_parent(level)
        set_up_malloc("mallopt")  # as the parent did (runtime/heap.py); its GLIBC_TUNABLES are inherited
        torch.set_num_threads(threads)
        self.job = make_job(config.model_copy(update={"device": device}))
        torch.set_num_threads(threads)  # model.threads set the process's count while loading
        self.checked = False

    def __call__(self, payload: bytes) -> bytes:
        from igcli.pipeline.run import _explain_chunk

        chunk, points, run_key = pickle.loads(payload)
        self.job.batch.points = points
        if not self.checked:
            self.checked = self._check_first(chunk)
            self.job.batch.points = points  # the parent's batch, measured once for the run
        groups = _explain_chunk(chunk, self.job, run_key)
        for group in groups:
            for record in group:
                if isinstance(record, Attribution):
                    record.sample = None  # the parent holds it (_with_samples)
        return pickle.dumps(groups, protocol=pickle.HIGHEST_PROTOCOL)

    def _check_first(self, chunk: list) -> bool:
        """The job's check on the chunk's first sample: it learns what explain needs (the model's classes)."""
        first = next((item for item in chunk if not isinstance(item, Failure)), None)
        if first is None:
            return False
        self.job.check(first)
        return True


def _send_error(conn: Connection, error: BaseException) -> None:
    try:
        conn.send_bytes(pickle.dumps(("error", error)))
    except (OSError, pickle.PicklingError):
        pass


def _log_as_parent(level: int) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("igcli")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False

