"""Synchronous data parallelism: merge every worker's gradients into those of the global batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from river_torchrec.distributed.group import Comm
from river_torchrec.nn import CTRModel
from river_torchrec.optim import DenseGrad, SparseGrad

__all__ = ["GradientMerger"]


class GradientMerger:
    """The gradient hook of a :class:`~river_torchrec.CTRClassifier` in ``"sync"`` mode.

    Worker ``r`` computed the mean gradient ``g_r`` of its ``n_r`` events. The hook returns,
    on every worker, ``sum_r n_r g_r / sum_r n_r``: the gradient of the mean loss over the
    concatenation of all the workers' batches, the *global batch*, whatever the ``n_r``
    (a worker whose shard is exhausted takes part with ``n_r = 0``). Every worker then
    applies the same update to the same weights, so the replicas never drift apart.

    * Dense gradients, the summed losses, the event count and each worker's number of
      touched embedding rows travel in one ``all_reduce`` of a flat float tensor.
    * Embedding gradients are sparse and differ in size: each worker pads its touched rows
      and their gradients to the largest count (known from the ``all_reduce``) and one
      ``all_gather`` exchanges them; the int64 row ids ride in two float32 columns,
      reinterpreted bit for bit (an ``all_gather`` only copies bytes, it never adds them).
      Each worker sums the rows' gradients in rank order into a ``[world, rows, width]``
      tensor, the same deterministic sum on every device.

    Parameters
    ----------
    comm
        This worker's collectives.
    net
        The classifier's model, whose trainable parameters give the order of the flat tensor.

    """

    def __init__(self, comm: Comm, net: CTRModel) -> None:
        self.comm = comm
        self.net = net

    def __call__(
        self, dense: Sequence[DenseGrad], sparse: Sequence[SparseGrad], loss: torch.Tensor, n: int
    ) -> tuple[list[DenseGrad], list[SparseGrad], torch.Tensor]:
        comm = self.comm
        world, rank = comm.world_size, comm.rank
        (table,) = sparse
        device = table.table.device
        # Every worker lists every trainable parameter, in the model's order, even one that
        # got no gradient, so the flat tensors line up.
        params = [(name, p) for name, p in self.net.named_parameters() if p.requires_grad]
        got = {d.name: d.grad for d in dense}
        rows = table.rows if n else table.rows[:0]
        parts = []
        for name, p in params:
            g = got.get(name)
            if g is None or not n:
                parts.append(torch.zeros(p.numel(), dtype=torch.float32, device=device))
            else:
                parts.append(g.reshape(-1).float() * n)
        extra = torch.zeros(2 + world, dtype=torch.float32, device=device)
        if n:
            extra[0] = loss.detach().float() * n
            extra[1] = n
        extra[2 + rank] = len(rows)
        flat = comm.all_reduce("dense all_reduce", torch.cat([*parts, extra]))

        tail = flat[-(2 + world) :].tolist()
        total = max(tail[1], 1.0)
        counts = [int(c) for c in tail[2:]]
        merged_dense = []
        offset = 0
        for name, p in params:
            k = p.numel()
            merged_dense.append(DenseGrad(name, p.data, (flat[offset : offset + k] / total).view_as(p)))
            offset += k
        merged_loss = torch.tensor(tail[0] / total, device=device)
        merged_rows, merged_grad = self._merge_rows(table, rows, n, counts, total)
        return merged_dense, [SparseGrad(table.name, table.table, merged_rows, merged_grad)], merged_loss

    def _merge_rows(
        self, table: SparseGrad, rows: torch.Tensor, n: int, counts: list[int], total: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = table.table.shape[1]
        device = table.table.device
        longest = max(counts)
        if longest == 0:
            return rows[:0], torch.zeros(0, width, device=device)
        pack = torch.zeros(longest, 2 + width, dtype=torch.float32, device=device)
        if len(rows):
            pack[: len(rows), :2] = rows.to(torch.int64).view(torch.float32).view(len(rows), 2)
            pack[: len(rows), 2:] = table.grad.float() * n
        gathered = self.comm.all_gather("sparse all_gather", pack)
        ids = [g[:c, :2].reshape(-1).view(torch.int64) for g, c in zip(gathered, counts)]
        merged, inverse = torch.unique(torch.cat(ids), return_inverse=True)
        acc = torch.zeros(len(gathered), len(merged), width, dtype=torch.float32, device=device)
        start = 0
        for r, (g, c) in enumerate(zip(gathered, counts)):
            acc[r, inverse[start : start + c]] = g[:c, 2:]
            start += c
        return merged, acc.sum(dim=0) / total
