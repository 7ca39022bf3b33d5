"""Pipeline parallelism: which layers a stage owns, what flows between stages, and the
point-to-point channel that carries it.

Layer split (as vLLM's get_pp_indices, with our own remainder rule): `num_layers // pp`
layers per stage; the `num_layers % pp` left-over layers go one each to the EARLIEST
stages. The last stage also runs the final norm, the LM head and the sampler, so it is
the one that should not get an extra layer; stage 0's embedding lookup is cheap.

Between stages flow the hidden states and the residual stream ([tokens, hidden] each);
every stage knows the step's token count from the plan, so only the tensors travel.
With async scheduling the last stage also sends the sampled token ids back to stage 0
(the next step's inputs), never logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


def get_pp_layer_range(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """[start, end) of the decoder layers stage `pp_rank` of `pp_size` owns."""
    if not isinstance(pp_size, int) or pp_size < 1:
        raise ValueError(f"the pipeline-parallel size must be a positive int, got {pp_size!r}")
    if not 0 <= pp_rank < pp_size:
        raise ValueError(f"pipeline rank must be in [0, {pp_size}), got {pp_rank!r}")
    if num_layers < pp_size:
        raise ValueError(f"--pipeline-parallel-size {pp_size} exceeds the model's "
                         f"{num_layers} layers: every stage needs at least one layer")
    base, extra = divmod(num_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return start, start + base + (1 if pp_rank < extra else 0)


@dataclass
class IntermediateTensors:
    """What a non-last stage hands to the next one."""

    hidden_states: torch.Tensor
    residual: torch.Tensor


class PipelineGroup:
    """Point-to-point messages between the stages of one tensor-parallel rank.

    `ranks` are the global ranks of the stages, in stage order (tp_rank, tp + tp_rank, ...);
    tp rank t of stage s talks only to tp rank t of stages s-1 and s+1 (and, for the
    sampled tokens, the last stage to the first)."""

    def __init__(self, group: Optional[dist.ProcessGroup], ranks: list[int], rank: int):
        if rank not in ranks:
            raise ValueError(f"rank {rank} is not in the pipeline group {ranks}")
        self.group = group
        self.ranks = list(ranks)
        self.size = len(ranks)
        self.stage = ranks.index(rank)

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.size - 1

    def send_intermediate(self, tensors: IntermediateTensors) -> None:
        nxt = self.ranks[self.stage + 1]
        dist.send(tensors.hidden_states.contiguous(), nxt, group=self.group)
        dist.send(tensors.residual.contiguous(), nxt, group=self.group)

    def recv_intermediate(self, num_tokens: int, hidden_size: int, dtype: torch.dtype,
                          device: torch.device) -> IntermediateTensors:
        prev = self.ranks[self.stage - 1]
        hidden = torch.empty((num_tokens, hidden_size), dtype=dtype, device=device)
        residual = torch.empty_like(hidden)
        dist.recv(hidden, prev, group=self.group)
        dist.recv(residual, prev, group=self.group)
        return IntermediateTensors(hidden, residual)

    def send_tokens_to_first(self, token_ids: torch.Tensor) -> None:
        dist.send(token_ids.to(torch.int64).contiguous(), self.ranks[0], group=self.group)

    def irecv_tokens_from_last(self, n: int, device: torch.device) -> "PendingTokens":
        buf = torch.empty(n, dtype=torch.int64, device=device)
        return PendingTokens(buf, dist.irecv(buf, self.ranks[-1], group=self.group))


class PendingTokens:
    """Sampled token ids on their way from the last stage; `wait()` before reading."""

    def __init__(self, buf: torch.Tensor, work):
        self._buf, self._work = buf, work

    def wait(self) -> torch.Tensor:
        if self._work is not None:
            self._work.wait()
            self._work = None
        return self._buf
