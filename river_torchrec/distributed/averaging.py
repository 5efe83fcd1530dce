"""Local SGD: every worker learns on its own, and the replicas are averaged every few events."""

from __future__ import annotations

import torch

from river_torchrec.distributed.group import Comm
from river_torchrec.nn import PADDING_ROW, CTRModel

__all__ = ["average_models"]


@torch.no_grad()
def average_models(comm: Comm, net: CTRModel, n_events: int, touched: torch.Tensor) -> None:
    """Replace every worker's weights by their average, in place and identically everywhere.

    * Dense parameters: the mean over the workers weighted by the events each learned
      since the last average, so a worker whose shard is exhausted (0 events, weights
      unchanged since the last average) does not pull the others back.
    * Embedding rows: only the rows some worker touched since the last average move (the
      others are identical everywhere already), each to the mean over *the workers that
      touched it*. Sharding by user keeps a user's rows on one worker, and this rule gives
      them exactly that worker's values instead of halving its progress.

    Optimizer state (Adam's moments, ...) stays local to each worker: only weights are
    averaged, as in plain local SGD.

    Parameters
    ----------
    comm
        This worker's collectives.
    net
        The model to average.
    n_events
        Events this worker learned since the last average.
    touched
        The embedding rows this worker's steps touched since the last average.

    """
    world, rank = comm.world_size, comm.rank
    table = net.embedding.weight
    device = table.device
    touched = torch.unique(touched.to(device))
    touched = touched[touched != PADDING_ROW]
    params = [p for _, p in net.named_parameters()]
    extra = torch.zeros(1 + world, dtype=torch.float32, device=device)
    extra[0] = n_events
    extra[1 + rank] = len(touched)
    flat = torch.cat([*(p.detach().reshape(-1).float() * n_events for p in params), extra])
    comm.all_reduce("average all_reduce", flat)
    tail = flat[-(1 + world) :].tolist()
    total = tail[0]
    if total > 0:
        offset = 0
        for p in params:
            k = p.numel()
            p.copy_((flat[offset : offset + k] / total).view_as(p))
            offset += k

    counts = [int(c) for c in tail[1:]]
    longest = max(counts)
    if longest == 0:
        return
    padded = torch.full((longest,), -1, dtype=torch.int64, device=device)
    padded[: len(touched)] = touched
    union = torch.unique(torch.cat(comm.all_gather("rows all_gather", padded)))
    union = union[union >= 0]
    width = table.shape[1]
    mine = torch.isin(union, touched)
    # Row values and a "touched" count in one tensor: one all_reduce gives sums and counts.
    sums = torch.zeros(len(union), width + 1, dtype=torch.float32, device=device)
    sums[mine, :width] = table[union[mine]].float()
    sums[mine, width] = 1.0
    comm.all_reduce("rows all_reduce", sums)
    table[union] = (sums[:, :width] / sums[:, width:]).to(table.dtype)
