"""Chunks explained by Ray actors: ``--ray auto|ADDRESS`` (``pip install 'igcli[ray]'``).

The driver (this process) reads, chunks and writes exactly as with local workers
(pipeline/workers.py); each actor holds the model on its own CPU cores or GPU and explains whole
chunks. An actor that dies is replaced and its chunk retried once on another. ``auto`` joins the
cluster this machine belongs to (``ray start``, RAY_ADDRESS), or starts a local one. docs/scaling.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from igcli.config import Config
from igcli.errors import IgcliError, UsageError
from igcli.pipeline.workers import ChunkDispatcher, ChunkExplainer, _Task

log = logging.getLogger("igcli")
THREADS_PER_ACTOR = 4  # CPU actors' torch threads where --workers does not set their number


@dataclass(frozen=True)
class RayPlan:
    """``--ray ADDRESS`` with ``--workers`` (the actors; default one per GPU, or per
    THREADS_PER_ACTOR CPUs) and the configured device (cpu: CPU actors; cuda: one GPU each;
    auto: GPUs where the cluster has them)."""

    address: str
    workers: int | None
    device: str

    def start(self, config: Config, job: Any) -> "RayWorkers":
        return RayWorkers(self, config, job)


def ray_plan(address: str | None, workers: int | None, device: str) -> RayPlan | None:
    """The plan for ``--ray`` (None without it); ``device`` as asked, before driver_device."""
    return None if address is None else RayPlan(address, workers, device)


def driver_device(address: str | None, device: str | None) -> str | None:
    """The device the driver loads its model on (to check it and size batches): the configured
    one, or the CPU where GPU actors are asked for on a driver without CUDA (a cluster's head)."""
    if address is None or device is None or not device.startswith("cuda"):
        return device
    if not torch.cuda.is_available():
        return "cpu"
    return "cuda" if "," in device or device.endswith(":all") else device


class RayWorkers(ChunkDispatcher):
    """Actors for one run; a context manager whose exit ends them (and a Ray it started)."""

    def __init__(self, plan: RayPlan, config: Config, job: Any):
        super().__init__(0, job)
        self.plan, self.config = plan, config
        self._ray = _import_ray()
        self._started_ray = False
        self._actors: list[Any] = []
        self._refs: dict[int, Any] = {}

    def __enter__(self) -> "RayWorkers":
        ray = self._ray
        if not ray.is_initialized():
            self._connect()
            self._started_ray = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        on_gpu = self.plan.device.startswith("cuda") or self.plan.device == "auto" and gpus > 0
        cpus = max(1, int(resources.get("CPU", 1)))
        if on_gpu and gpus == 0:
            raise UsageError(f"--ray {self.plan.address}: --device {self.plan.device} asks for GPU actors and the "
                             "cluster has no GPU; use --device cpu")
        self.count = self.plan.workers or (gpus if on_gpu else max(1, cpus // THREADS_PER_ACTOR))
        threads = 1 if on_gpu else max(1, cpus // self.count)
        options = {"num_gpus": 1, "num_cpus": 1} if on_gpu else {"num_cpus": min(threads, cpus)}
        self._make_actor = lambda: ray.remote(_Actor).options(**options).remote(
            self.config, "cuda" if on_gpu else "cpu", threads, logging.getLogger("igcli").getEffectiveLevel())
        self._actors = [self._make_actor() for _ in range(self.count)]
        log.info("ray: %d actor(s) on %s, %d thread(s) each", self.count, "GPUs" if on_gpu else "CPUs", threads)
        return self

    def _connect(self) -> None:
        ray, address = self._ray, self.plan.address
        try:
            if address != "auto":
                ray.init(address=address)
                return
            try:
                ray.init(address="auto")  # a cluster this machine is part of
            except ConnectionError:
                ray.init()  # none: a local one, for this run
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise UsageError(f"--ray {address}: cannot connect to Ray ({error}); give auto or the head's "
                             "address, e.g. ray://head:10001") from None

    def __exit__(self, *exc: Any) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started_ray:
            self._ray.shutdown()

    def _send(self, slot: int, payload: bytes) -> None:
        self._refs[slot] = self._actors[slot].explain.remote(payload)

    def _answers(self, running: dict[int, _Task]) -> Iterator[tuple[int, tuple[str, Any]]]:
        ray = self._ray
        slots = {self._refs[slot]: slot for slot in running}
        ready, _ = ray.wait(list(slots), num_returns=1)
        for ref in ready:
            slot = slots[ref]
            del self._refs[slot]
            try:
                yield slot, ("records", ray.get(ref))
            except ray.exceptions.RayActorError as error:
                yield slot, ("died", f"Ray actor lost: {str(error).splitlines()[0]}")
            except ray.exceptions.RayTaskError as error:
                cause = getattr(error, "cause", None)
                yield slot, ("error", cause if isinstance(cause, IgcliError) else error)

    def _replace(self, slot: int) -> None:
        self._ray.kill(self._actors[slot])
        self._actors[slot] = self._make_actor()


class _Actor:
    """A Ray actor holding one ChunkExplainer."""

    def __init__(self, config: Config, device: str, threads: int, level: int):
        self.explainer = ChunkExplainer(config, device, threads, level)

    def explain(self, payload: bytes) -> bytes:
        return self.explainer(payload)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'igcli[ray]'") from None
    return ray
