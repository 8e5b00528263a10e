"""`packed_sdpa`: training attention for the CPU: packed rows sample by sample, all of it in float32.

On a packed row (training/packing.py) SDPA computes the row's whole length² and masks most of it
away, and PyTorch's CPU flash kernel is several times slower in bfloat16 than in float32 at these
sizes (a one-off timing of torch's SDPA alone, forward and backward on 2 cores: the default
model's SigLIP layer, 24 images of 64 tokens, 27 ms in bf16 against 5.5 ms; 10 packed rows of 320
tokens 41 ms, the same tokens as 30 causal samples of 100 in fp32 13 ms). So in training this
gathers a packed step's samples into groups of similar length, one causal SDPA per group, and runs
every SDPA call (the vision tower's too) in float32 on the CPU: a step costs its samples' own
length². In evaluation and generation it is transformers' SDPA unchanged.
`benchmarks/row_length.py --attention sdpa packed_sdpa` times whole training steps.

flash_attention_2's varlen kernels do this for packed rows on CUDA; on the CPU no library does:
FlexAttention has no CPU backward (torch 2.13), so this small piece is written here.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, find_packed_sequence_indices, sdpa_mask

NAME = "packed_sdpa"
# The CPU flash kernel's cost, forward and backward (2 cores, 8 heads of 32): about L² + 35 L per
# sample padded to L, plus a call's own cost (gathers, scatters, the kernel's start) of about one
# sample of 90 tokens. Groups are chosen to minimise it.
PER_TOKEN_COST = 35
CALL_COST = 90**2 + PER_TOKEN_COST * 90
Group = tuple[torch.Tensor, torch.Tensor, int]  # token indices, positions of the real ones, longest sample


@lru_cache(maxsize=4)
def _plan(sequences: bytes, rows: int, length: int) -> tuple[list[Group], torch.Tensor]:
    """For transformers' packed-sequence indices (rows × length int64 bytes, masking_utils'
    find_packed_sequence_indices: the same samples SDPA's block mask keeps apart): each group's
    token indices into the flattened batch (group × longest, flattened), the positions of its real
    tokens among them and its longest sample; and the permutation that puts the groups' outputs
    back in row order. Every layer of a step asks the same; the cache answers after the first."""
    sequence = torch.frombuffer(bytearray(sequences), dtype=torch.int64).view(rows, length)
    samples = []  # (first flat index, length); a row's padded tail is a sample of its own
    for r in range(rows):
        starts = [0] + ((sequence[r, 1:] != sequence[r, :-1]).nonzero().flatten() + 1).tolist() + [length]
        samples += [(r * length + s, e - s) for s, e in zip(starts, starts[1:])]
    samples.sort(key=lambda sample: -sample[1])
    groups, order = [], []
    for first, end in _cheapest_groups([n for _, n in samples]):
        group = samples[first:end]
        longest = group[0][1]
        index = torch.zeros(len(group), longest, dtype=torch.long)  # padding points at token 0: causal, never read
        real = torch.zeros(len(group), longest, dtype=torch.bool)
        for i, (start, n) in enumerate(group):
            index[i, :n] = torch.arange(start, start + n)
            real[i, :n] = True
        groups.append((index.flatten(), real.flatten().nonzero().flatten(), longest))
        order.append(index[real])
    return groups, torch.cat(order).argsort()


def _cheapest_groups(lengths: list[int]) -> list[tuple[int, int]]:
    """Split lengths sorted longest first into runs [first, end), each one SDPA call padded to its
    first length, at the least total cost (dynamic programming over where runs start)."""
    cost = [0.0] + [float("inf")] * len(lengths)
    start = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for first in range(end):
            longest = lengths[first]
            c = cost[first] + CALL_COST + (end - first) * (longest * longest + PER_TOKEN_COST * longest)
            if c < cost[end]:
                cost[end], start[end] = c, first
    runs, end = [], len(lengths)
    while end:
        runs.append((start[end], end))
        end = start[end]
    return runs[::-1]


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (B, heads, L, D) in, (B, L, heads, D) out."""
    if not module.training:  # evaluation and generation
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    upcast = query.device.type == "cpu"
    rows, heads, length, dim = query.shape
    position_ids = kwargs.get("position_ids")
    sequences = None
    if getattr(module, "is_causal", False) and length == key.shape[2] and position_ids is not None:
        sequences = find_packed_sequence_indices(position_ids.expand(rows, -1))  # None: one sample a row
    if sequences is None:  # unpacked batches, the vision tower: SDPA, in float32 on the CPU
        if not upcast:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        with torch.autocast("cpu", enabled=False):
            q, k, v = query.float(), key.float(), value.float()
            out, _ = sdpa_attention_forward(module, q, k, v, attention_mask, dropout, scaling, **kwargs)
        return out.to(query.dtype), None
    groups, back = _plan(sequences.to("cpu", torch.int64).contiguous().numpy().tobytes(), rows, length)

    def flat(t: torch.Tensor) -> torch.Tensor:  # (B, h, L, D) -> (B*L, h, D)
        return t.transpose(1, 2).reshape(rows * length, t.shape[1], dim)

    q, k, v = flat(query), flat(key), flat(value)
    outputs = []
    with torch.autocast(query.device.type, enabled=False):
        # index_select, not t[index]: its backward is index_add_, where advanced indexing's
        # index_put_(accumulate=True) took 6% of a CPU training step
        for index, real, longest in groups:
            index, real = index.to(query.device), real.to(query.device)
            gq, gk, gv = (t.index_select(0, index).unflatten(0, (-1, longest)) for t in (q, k, v))
            gq, gk, gv = (t.transpose(1, 2) for t in (gq, gk, gv))  # (G, h, longest, D)
            if upcast:
                gq, gk, gv = gq.float(), gk.float(), gv.float()
            out = F.scaled_dot_product_attention(
                gq, gk, gv, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gq.shape[1] != gk.shape[1]
            )
            outputs.append(out.transpose(1, 2).flatten(0, 1).index_select(0, real))  # (real tokens, h, D)
    attended = torch.cat(outputs).index_select(0, back.to(query.device)).to(query.dtype)
    return attended.view(rows, length, heads, dim), None


AttentionInterface.register(NAME, packed_sdpa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)  # unpacked batches get exactly SDPA's mask
