"""Data-parallel online learning on ``torch.distributed``: N workers, one model.

Launch one process per worker with ``torchrun`` (Gloo on CPU, NCCL on GPU); each joins the
group with :func:`init_process_group`, reads its :func:`shard` of the stream and learns it
with :class:`DistributedCTR`, in ``"sync"`` mode (merged gradients every step) or
``"local_sgd"`` mode (weights averaged every few events). ``python -m
river_torchrec.distributed --help`` runs it from the command line.
"""

from __future__ import annotations

from river_torchrec.distributed.averaging import average_models
from river_torchrec.distributed.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from river_torchrec.distributed.gradients import GradientMerger
from river_torchrec.distributed.group import Comm, WorkerFailure, free_port, init_process_group, threads_per_worker
from river_torchrec.distributed.shard import owner, shard
from river_torchrec.distributed.trainer import DistributedCTR, Report, fingerprint

__all__ = [
    "Comm",
    "DistributedCTR",
    "GradientMerger",
    "Report",
    "WorkerFailure",
    "average_models",
    "fingerprint",
    "free_port",
    "init_process_group",
    "latest_checkpoint",
    "load_checkpoint",
    "owner",
    "save_checkpoint",
    "shard",
    "threads_per_worker",
]
