"""The any-to-any model: SigLIP + aligner in, causal LM in the middle, text and VQ-code heads out.

    und. image ─► SiglipVisionModel ─► aligner ─┐
    text ───────► LM input embeddings ──────────┼─► causal LM ─┬─► lm_head  (text vocabulary)
    VQ codes ───► gen_embed ─► gen_aligner ─────┘              └─► gen_head (VQ codebook)

Module names follow DeepSeek's Janus (`aligner.layers.0`, `gen_head.output_mlp_projector`, …)
so their checkpoints map with few renames.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, SiglipVisionModel
from transformers.utils import ModelOutput

from .checkpoint import load_model
from .checkpoint.own import load_own_format
from .configuration import JanusLikeConfig, JanusLikeVQConfig
from .layout import GEN_IMAGE, IGNORE_INDEX, TEXT, UND_IMAGE
from .vq import JanusLikeVQModel


class MlpAligner(nn.Module):
    """Linear, then (GELU, Linear) × (depth − 1): Janus's `mlp_gelu` projector."""

    def __init__(self, in_dim: int, out_dim: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GenHead(nn.Module):
    """Decoder hidden state -> logits over the VQ codebook (Janus's `vision_head`)."""

    def __init__(self, hidden_size: int, head_hidden_size: int, codebook_size: int):
        super().__init__()
        self.output_mlp_projector = nn.Linear(hidden_size, head_hidden_size)
        self.vision_activation = nn.GELU()
        self.vision_head = nn.Linear(head_hidden_size, codebook_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_head(self.vision_activation(self.output_mlp_projector(x)))


@dataclass
class JanusLikeOutput(ModelOutput):
    """Task-masked loss and its parts; token counts say how many targets each head scored."""

    loss: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    image_loss: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    cache: object | None = None


def chunked_cross_entropy(head, states: torch.Tensor, targets: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Summed cross-entropy of `head(states)` against `targets`, `chunk` rows at a time.

    Each chunk's logits are recomputed in backward (activation checkpointing), so at most
    chunk × vocab logits exist at once however many targets the batch has."""
    if states.shape[0] <= chunk:
        return F.cross_entropy(head(states).float(), targets, reduction="sum")

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), t, reduction="sum")

    total = states.new_zeros((), dtype=torch.float32)
    for h, t in zip(states.split(chunk), targets.split(chunk)):
        total = total + torch.utils.checkpoint.checkpoint(chunk_loss, h, t, use_reentrant=False)
    return total


def _unused(output: torch.Tensor) -> torch.Tensor:
    """A 0 that depends on `output`: the part that made it runs and gets (zero) gradients."""
    return output.sum() * 0.0


@functools.cache
def cache_kwarg(decoder_class: type) -> str:
    """The decoder's KV-cache argument: `cache` in transformers >= 5.24, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


class JanusLikeForConditionalGeneration(PreTrainedModel):
    config_class = JanusLikeConfig
    base_model_prefix = "janus_like"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        config: JanusLikeConfig,
        language_model: PreTrainedModel | None = None,
        vision_model: SiglipVisionModel | None = None,
        vq: JanusLikeVQModel | None = None,
    ):
        """Build every part from `config`, or adopt already-loaded parts (see `from_parts`)."""
        super().__init__(config)
        hidden = config.text_config.hidden_size
        vq_cfg = config.vq_config
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        self.vision_model = vision_model or SiglipVisionModel(config.vision_config)
        self.aligner = MlpAligner(config.vision_config.hidden_size, hidden, config.aligner_depth)
        self.vq = vq or JanusLikeVQModel(vq_cfg)
        self.gen_embed = nn.Embedding(vq_cfg.codebook_size, vq_cfg.codebook_dim)
        self.gen_aligner = MlpAligner(vq_cfg.codebook_dim, hidden, config.gen_aligner_depth)
        self.gen_head = GenHead(hidden, config.gen_head_hidden_size, vq_cfg.codebook_size)
        self.post_init()

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs) -> None:
        """A name ("sdpa", "eager", "flex_attention", …) sets the decoder's and the vision tower's
        attention; the VQ tokenizer keeps its own (transformers would hand it the name too, and it
        refuses sdpa and flex, failing the whole call). A dict is transformers' per-sub-config form."""
        if isinstance(attn_implementation, str):
            attn_implementation = {key: attn_implementation for key in ("", "text_config", "vision_config")}
        super().set_attn_implementation(attn_implementation, **kwargs)

    # ------------------------------------------------------------------ parts

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    @property
    def decoder(self) -> nn.Module:
        """The LM's transformer body (no head): hidden states out."""
        return self.language_model.get_decoder()

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_output_embeddings()(hidden)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gen_head(hidden)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Understanding images (N, 3, S, S) -> aligned features (N, tokens, hidden)."""
        dtype = self.aligner.layers[0].weight.dtype
        features = self.vision_model(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return self.aligner(features)

    def gen_image_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """VQ code ids (any shape) -> decoder input embeddings (same shape + hidden)."""
        return self.gen_aligner(self.gen_embed(codes))

    # ------------------------------------------------------------------ forward

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        modality: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        run_all_parts: bool = False,
    ) -> torch.Tensor:
        """Mixed-modality embeddings: text ids through the LM table, understanding placeholders
        replaced by SigLIP features (in order), generation positions by embedded VQ codes.
        `run_all_parts`: see `forward`."""
        if modality is None:
            modality = torch.zeros_like(input_ids)
        text_ids = torch.where(modality == TEXT, input_ids, 0)
        embeds = self.get_input_embeddings()(text_ids)
        und = modality == UND_IMAGE
        if und.any():
            if image_features is None:
                if pixel_values is None:
                    raise ValueError("the batch has understanding-image positions but no pixel_values")
                image_features = self.image_features(pixel_values)
            features = image_features.reshape(-1, embeds.shape[-1]).to(embeds.device, embeds.dtype)
            if features.shape[0] != int(und.sum()):
                raise ValueError(
                    f"{int(und.sum())} understanding-image positions but {features.shape[0]} image features"
                )
            embeds = embeds.masked_scatter(und.unsqueeze(-1), features)
        gen = modality == GEN_IMAGE
        if gen.any():
            gen_embeds = self.gen_image_embeddings(input_ids[gen].to(self.gen_embed.weight.device)).to(
                embeds.device, embeds.dtype
            )
            embeds = embeds.masked_scatter(gen.unsqueeze(-1), gen_embeds)
        if run_all_parts and not und.any():
            size = self.config.vision_config.image_size
            blank = embeds.new_zeros(1, 3, size, size)
            embeds = embeds + _unused(self.image_features(blank))
        if run_all_parts and not gen.any():
            embeds = embeds + _unused(self.gen_image_embeddings(input_ids.new_zeros(1)))
        return embeds

    def fill_gen_codes(
        self,
        input_ids: torch.Tensor,
        modality: torch.Tensor,
        labels: torch.Tensor | None,
        gen_pixel_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode generation images with the (frozen) VQ tokenizer and write the codes into the
        generation positions of `input_ids` and, where they are targets, of `labels`."""
        codes = self.vq.encode(gen_pixel_values).to(input_ids.device)
        gen = modality == GEN_IMAGE
        if codes.numel() != int(gen.sum()):
            raise ValueError(f"{int(gen.sum())} generation-image positions but {codes.numel()} VQ codes")
        input_ids = input_ids.masked_scatter(gen, codes.flatten())
        if labels is not None:
            labels = torch.where(gen & (labels != IGNORE_INDEX), input_ids, labels)
        return input_ids, labels

    def forward(
        self,
        input_ids: torch.Tensor,
        modality: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        gen_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        run_all_parts: bool = False,
        **kwargs,
    ) -> JanusLikeOutput:
        """Run the decoder over a mixed batch; with `labels`, return the task-masked loss.

        Position t is scored against token t+1 only where `labels[t+1]` is a target; the head is
        chosen by the modality of t+1 (text -> lm_head, generation image -> gen_head), and each
        head runs on the selected positions only, never on batch × seq × vocab.

        `run_all_parts`: also run the parts this batch does not need (the vision tower on a blank
        image, the code embedding, a head without targets), each adding exactly 0. Sharded data
        parallelism (FSDP, DeepSpeed ZeRO-3) gathers a part's weights when it runs and reduces its
        gradients after, so every process must run the same parts, whatever its samples are."""
        if modality is None:
            modality = torch.zeros_like(input_ids)
        if gen_pixel_values is not None:
            input_ids, labels = self.fill_gen_codes(input_ids, modality, labels, gen_pixel_values)
        embeds = self.embed_inputs(input_ids, modality, pixel_values, run_all_parts=run_all_parts)
        decoder = self.decoder
        cache_name = cache_kwarg(type(decoder))
        kwargs[cache_name] = cache
        out = decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        result = JanusLikeOutput(last_hidden_state=hidden, cache=out.get(cache_name))
        if labels is None:
            return result
        return self._task_masked_loss(hidden, labels, modality, result, run_all_parts)

    def _task_masked_loss(
        self,
        hidden: torch.Tensor,
        labels: torch.Tensor,
        modality: torch.Tensor,
        result: JanusLikeOutput,
        run_all_parts: bool = False,
    ) -> JanusLikeOutput:
        targets, target_modality, states = labels[:, 1:], modality[:, 1:], hidden[:, :-1]
        is_target = targets != IGNORE_INDEX
        text_sel = is_target & (target_modality == TEXT)
        image_sel = is_target & (target_modality == GEN_IMAGE)
        zero = hidden.new_zeros((), dtype=torch.float32)
        text_sum, image_sum = zero, zero
        if text_sel.any():
            text_sum = chunked_cross_entropy(self.text_logits, states[text_sel], targets[text_sel])
        elif run_all_parts:
            text_sum = _unused(self.text_logits(hidden[:1, 0]).float())
        if image_sel.any():
            image_sum = chunked_cross_entropy(self.image_logits, states[image_sel], targets[image_sel])
        elif run_all_parts:
            image_sum = _unused(self.image_logits(hidden[:1, 0]).float())
        n_text, n_image = text_sel.sum(), image_sel.sum()
        result.text_tokens, result.image_tokens = n_text, n_image
        result.text_loss = text_sum / n_text.clamp_min(1)
        result.image_loss = image_sum / n_image.clamp_min(1)
        result.loss = (text_sum + image_sum) / (n_text + n_image).clamp_min(1)
        return result

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None, *args, **kwargs):
        """Load any supported layout (docs/ARCHITECTURE.md §5): this package's own, DeepSeek's original
        Janus / Janus-Pro, or transformers' Janus. Detection lives in `janus_like.checkpoint`."""
        return load_model(cls, pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _from_own_format(cls, path: str | os.PathLike, *args, **kwargs):
        """transformers' loader for a `save_pretrained` directory of this class, made strict: a
        missing, unexpected or reshaped tensor or an unreadable file is a CheckpointError."""
        return load_own_format(cls, super().from_pretrained, path, *args, **kwargs)

    @classmethod
    def from_parts(
        cls,
        llm: str | os.PathLike,
        vision: str | os.PathLike,
        vq: str | os.PathLike | None = None,
        *,
        vq_config: JanusLikeVQConfig | dict | None = None,
        return_processor: bool = False,
        dtype: torch.dtype | None = None,
        **config_overrides,
    ):
        """Compose a new model from pretrained local parts: any causal LM (and its tokenizer), a
        SigLIP vision encoder (a SigLIP or SigLIP-vision checkpoint) and a VQ tokenizer (this
        package's format; or `vq_config`, a JanusLikeVQConfig or dict, for a fresh one). The image
        special tokens are added to the LM's tokenizer and its embeddings resized; aligners and the
        image head start random. With `return_processor`: (model, processor)."""
        # imported on use: composing builds a processor, which the model itself never needs
        from .compose import compose

        return compose(
            cls,
            llm,
            vision,
            vq,
            vq_config=vq_config,
            return_processor=return_processor,
            dtype=dtype,
            **config_overrides,
        )
