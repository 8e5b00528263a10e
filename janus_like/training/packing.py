"""Sequence packing: several short samples share one row, and attention stays inside each sample.

A packed row carries `position_ids` that restart at 0 for every sample and no `attention_mask`.
transformers' mask builder (masking_utils.find_packed_sequence_indices) turns such position ids
into a block-diagonal causal mask for SDPA / eager / flex attention (tested here: packed and padded
losses agree), and its flash-attention path into varlen calls; RoPE sees each sample at its own
positions. With SDPA the masked-out blocks of a row are still computed (attention costs row
length², not the sum of sample length²); flash-attention varlen skips them.

The loss needs nothing extra: position t is scored against token t+1 only where t+1 is a target,
and the first token of every sample is made a non-target here, so the last token of one sample
is never trained to predict the first token of the next.
"""

from __future__ import annotations

import torch

from ..layout import TokenSequence
from ..processor import JanusLikeProcessor


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group sample indices into rows of at most `capacity` tokens (longest first, first row that fits)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > capacity:
            raise ValueError(f"a sample of {lengths[i]} tokens does not fit a row of {capacity}")
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def concatenate(seqs: list[TokenSequence]) -> TokenSequence:
    """Samples end to end in one row; each sample's first token is not a target."""
    row = TokenSequence()
    for seq in seqs:
        row.ids += seq.ids
        row.modality += seq.modality
        row.trainable += [False] + seq.trainable[1:]
        row.und_pixels += seq.und_pixels
        row.gen_pixels += seq.gen_pixels
    return row


def collate_packed(processor: JanusLikeProcessor, seqs: list[TokenSequence], max_length: int) -> dict:
    """Pack samples into as few rows of at most `max_length` tokens as fit; the batch is as long
    as its longest row. Returns the model's inputs with restarting `position_ids`. A row may be
    longer than the model's context (each sample's positions start at 0); each sample must fit it."""
    for seq in seqs:
        processor.check_length(seq)
    groups = first_fit_decreasing([len(s) for s in seqs], max_length)
    rows = [concatenate([seqs[i] for i in group]) for group in groups]
    batch = processor.collate(rows, check_length=False)
    length = batch["input_ids"].shape[1]
    position_ids = torch.empty((len(rows), length), dtype=torch.long)
    for r, group in enumerate(groups):
        starts = [len(seqs[i]) for i in group]
        tail = length - sum(starts)  # padding: a sequence of its own that attends only to itself
        position_ids[r] = torch.cat([torch.arange(n) for n in starts + ([tail] if tail else [])])
    batch["position_ids"] = position_ids
    del batch["attention_mask"]  # required: transformers detects packing only without a 2D mask
    return batch


def collate_padded(processor: JanusLikeProcessor, seqs: list[TokenSequence]) -> dict:
    """One sample per row, right-padded to the longest (the unpacked baseline)."""
    return processor.collate(seqs)
