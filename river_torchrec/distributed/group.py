"""Joining the workers' process group, and timed collectives that fail with a clear error."""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["WorkerFailure", "Comm", "init_process_group", "free_port", "threads_per_worker"]

T = TypeVar("T")


class WorkerFailure(RuntimeError):
    """A collective operation failed: another worker died, or did not answer in time."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (for single-machine launches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_worker(local_world_size: int) -> int:
    """The machine's cores shared evenly between the workers running on it (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))


def init_process_group(
    backend: str = "auto",
    timeout: float = 60.0,
    device: str = "cpu",
    threads: int | None = None,
) -> torch.device:
    """Join the process group described by ``torchrun``'s environment variables.

    Without them (a plain ``python`` launch) the process joins a group of one worker on
    127.0.0.1, so the same script runs with or without ``torchrun``. Each worker gets
    ``cores // local_world_size`` intra-op threads unless ``threads`` is given.

    Parameters
    ----------
    backend
        ``"gloo"`` (CPU), ``"nccl"`` (CUDA) or ``"auto"``: NCCL when ``device`` is CUDA,
        else Gloo.
    timeout
        Seconds a collective may wait for the other workers before it fails; a worker that
        died or hangs then makes every other worker raise :class:`WorkerFailure` instead of
        waiting forever.
    device
        ``"cpu"`` or ``"cuda"``: a CUDA worker uses the GPU of its ``LOCAL_RANK``.
    threads
        Intra-op threads of this worker.

    Returns
    -------
    torch.device
        The device this worker computes on.

    """
    if not dist.is_available():
        raise RuntimeError("this build of PyTorch has no torch.distributed")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    torch.set_num_threads(threads or threads_per_worker(local_world))
    dist.init_process_group(
        backend=backend,
        timeout=datetime.timedelta(seconds=timeout),
        device_id=dev if dev.type == "cuda" else None,
    )
    return dev


class Comm:
    """The collectives of one worker, timed by kind, with failures turned into :class:`WorkerFailure`.

    Gloo collectives block until done, so wall-clock time around them is the time spent
    communicating (waiting for slower workers included). CUDA collectives are
    synchronised before the clock stops, for the same reason.

    Parameters
    ----------
    timeout
        The process group's timeout in seconds, quoted in error messages (if known).
    group
        The process group (the default one if None).

    """

    def __init__(self, timeout: float | None = None, group: Any = None) -> None:
        self.group = group
        self.timeout = timeout
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _run(self, kind: str, fn: Callable[[], T], device: torch.device | None = None) -> T:
        start = time.perf_counter()
        try:
            out = fn()
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
        except RuntimeError as exc:  # DistBackendError and Gloo's errors are RuntimeErrors
            limit = "the process group's timeout" if self.timeout is None else f"the {self.timeout:g} s timeout"
            first_line = (str(exc).strip().splitlines() or [repr(exc)])[0]
            raise WorkerFailure(
                f"worker {self.rank} of {self.world_size}: the {kind} collective failed; another "
                f"worker probably died or did not answer within {limit} ({type(exc).__name__}: {first_line})"
            ) from exc
        self.seconds[kind] += time.perf_counter() - start
        self.calls[kind] += 1
        return out

    def all_reduce(self, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the workers, in place; every worker gets identical bits."""
        self._run(kind, lambda: dist.all_reduce(tensor, group=self.group), tensor.device)
        return tensor

    def all_gather(self, kind: str, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every worker's ``tensor`` (same shape everywhere), in rank order."""
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._run(kind, lambda: dist.all_gather(out, tensor, group=self.group), tensor.device)
        return out

    def all_gather_object(self, kind: str, obj: Any) -> list[Any]:
        """Every worker's picklable ``obj``, in rank order."""
        out: list[Any] = [None] * self.world_size
        self._run(kind, lambda: dist.all_gather_object(out, obj, group=self.group))
        return out

    def per_step(self, n_steps: int) -> dict[str, float]:
        """Milliseconds per step spent in each kind of collective."""
        return {k: 1e3 * v / max(1, n_steps) for k, v in sorted(self.seconds.items())}
