"""transformers' Janus as a reference: build a random `JanusForConditionalGeneration` at the
shape of a janus_like config and convert its weights (with the checkpoint loader's tensor map),
for parity tests and the benchmark (benchmarks/generate.py puts this folder on its path).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration

from janus_like.checkpoint.hf_janus import map_tensor, model_config
from janus_like.configuration import JanusLikeConfig
from janus_like.modeling import JanusLikeForConditionalGeneration
from janus_like.testing import widen_weights


def hf_janus_config(config: JanusLikeConfig) -> JanusConfig:
    """The transformers Janus config with the same decoder, SigLIP and head shapes."""
    text, vision, vq = config.text_config, config.vision_config, config.vq_config
    hidden = text.hidden_size
    if config.gen_head_hidden_size != hidden or config.num_image_tokens != config.num_gen_tokens:
        raise ValueError(
            "transformers' Janus needs gen_head_hidden_size == hidden_size and as many generated "
            "codes as understanding tokens"
        )
    text_dict = {**text.to_dict(), "tie_word_embeddings": False}
    vision_dict = dict(
        hidden_size=vision.hidden_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        mlp_ratio=vision.intermediate_size / vision.hidden_size,
        projection_dim=hidden,
        depth=config.aligner_depth,
        num_image_tokens=config.num_image_tokens,
        layer_norm_eps=vision.layer_norm_eps,
    )
    if vq.norm_num_groups == 32:  # transformers' VQ has 32 groups: then it can take this VQ's shape
        shape = dict(
            base_channels=vq.base_channels,
            channel_multiplier=list(vq.channel_multiplier),
            num_res_blocks=vq.num_res_blocks,
            latent_channels=vq.z_channels,
        )
    else:  # else a small VQ; its decoder only turns codes into pixels here
        shape = dict(base_channels=32, channel_multiplier=[1, 1], num_res_blocks=1, latent_channels=32)
    vq_dict = dict(
        embed_dim=vq.codebook_dim,
        num_embeddings=vq.codebook_size,
        projection_dim=hidden,
        image_token_embed_dim=hidden,
        num_hidden_layers=config.gen_aligner_depth,
        **shape,
    )
    return JanusConfig(
        text_config=text_dict,
        vision_config=vision_dict,
        vq_config=vq_dict,
        image_token_id=config.image_token_id,
        tie_word_embeddings=False,
    )


def random_hf_janus(
    config: JanusLikeConfig, seed: int = 0, dtype: torch.dtype | None = None, std: float | None = None
) -> JanusForConditionalGeneration:
    """Random weights; `std` redraws every matrix with that spread (transformers' init gives a
    tiny model nearly constant outputs, which makes parity checks weak)."""
    torch.manual_seed(seed)
    hf = JanusForConditionalGeneration(hf_janus_config(config)).eval()
    if std is not None:
        widen_weights(hf, std)
    return hf.to(dtype) if dtype is not None else hf


def hf_to_janus_like(hf: JanusForConditionalGeneration, config: JanusLikeConfig) -> JanusLikeForConditionalGeneration:
    """A janus_like model holding all of `hf`'s weights. The architecture (the VQ tokenizer's
    too) comes from `hf`'s config; tokens and chat settings from `config`."""
    arch = model_config(hf.config.to_dict())
    config = JanusLikeConfig(
        **{**config.to_dict(), "vq_config": arch.vq_config.to_dict(), "gen_image_size": arch.gen_image_size}
    )
    state = {}
    for key, tensor in hf.state_dict().items():
        mapped = map_tensor(key, tensor)
        if mapped is None:
            raise KeyError(f"unmapped transformers Janus key {key}")
        state.update(mapped)
    dtype = next(hf.parameters()).dtype
    model = JanusLikeForConditionalGeneration(config).to(dtype).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"weight mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def hf_generate_images(
    hf: JanusForConditionalGeneration,
    input_ids: torch.Tensor,
    processor,
    num_images: int,
    cfg_scale: float,
    do_sample: bool,
) -> torch.Tensor:
    """transformers' image mode: (num_images, codes) for one prompt."""
    input_ids = input_ids.repeat(num_images, 1)  # rows rather than num_return_sequences: greedy allows 1 only
    # top_k=0 (off): transformers would otherwise fill in its default 50 and sample from the top 50 codes only,
    # where ours samples from all of them
    config = GenerationConfig(
        do_sample=do_sample,
        top_k=0,
        guidance_scale=cfg_scale,
        pad_token_id=processor.pad_id,
        bos_token_id=processor.bos_id,
        generation_kwargs={"boi_token_id": processor.image_start_id},
    )
    return hf.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        generation_mode="image",
        generation_config=config,
    )
