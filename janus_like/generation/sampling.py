"""Logit processing and sampling: CFG and its plausibility cut, repetition penalty, temperature,
top-k, top-p.

Everything stays on the device and never reads a value back to the host, so the decode loop runs
without synchronisation."""

from __future__ import annotations

import torch


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: `u + s·(c − u)` (one fused lerp)."""
    return torch.lerp(uncond, cond, scale)


def plausible(guided: torch.Tensor, cond: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Contrastive decoding's adaptive plausibility constraint (Li et al., 2023) for image codes:
    only codes the conditional branch gives at least `alpha` of its top probability stay drawable.
    `u + s·(c − u)` amplifies the far tail, where an over-confident model's c and u differ by noise
    (the embedded model draws confetti at s ≥ 3 without it); alpha 0 (Janus) keeps every code."""
    logp = cond.log_softmax(-1)
    floor = logp.max(-1, keepdim=True).values + torch.log(torch.as_tensor(alpha, device=cond.device))
    return guided.masked_fill(logp < floor, float("-inf"))


def image_guided_logits(
    cond: torch.Tensor,
    twin: torch.Tensor,
    bare: torch.Tensor,
    scale: float | torch.Tensor,
    image_scale: float | torch.Tensor,
) -> torch.Tensor:
    """InstructPix2Pix's two-scale guidance for drawing from input images: `u∅ + s_I·(u_I − u∅)
    + s·(c − u_I)`, with `twin` = u_I (input images, no text) and `bare` = u∅ (neither). With
    s_I = 1 it is `guided_logits(cond, twin, scale)`."""
    return torch.lerp(bare, twin, image_scale) + scale * (cond - twin)


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as transformers): seen tokens' positive logits are divided by the
    penalty, negative ones multiplied. `seen` is a (rows, vocab) bool mask."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the k best tokens and the smallest set whose probability reaches top_p; -inf elsewhere."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already enough
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """(rows, vocab) logits -> (rows,) token ids; temperature 0 is argmax.

    Sampling uses the exponential-race form of Gumbel-max (argmax of p / E, E ~ Exp(1)), as
    gpt-fast does: the same distribution as `torch.multinomial`, with no host sync on CUDA.
    `noise` (the E draws) may be given, so that a compiled graph needs no generator."""
    logits = logits.float()
    if isinstance(temperature, torch.Tensor):  # a compiled step's temperature: a value, never 0
        logits = logits / temperature
    elif temperature == 0:
        return logits.argmax(dim=-1)
    elif temperature != 1:
        logits = logits / temperature
    probs = filter_top_k_top_p(logits, top_k, top_p).softmax(dim=-1)
    if noise is None:
        noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)
