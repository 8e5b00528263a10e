"""transformers' Janus layout (`model_type: "janus"`, `JanusForConditionalGeneration.save_pretrained`).

Names map onto this package's modules one to one, except the VQ tokenizer: LlamaGen's
`down/up/block/attn/mid` spelling becomes diffusers' Encoder/Decoder blocks, its 1x1-conv
attention becomes diffusers' linear attention, and the codebook becomes `VectorQuantize`'s
l2-normalised EMA codebook. `map_vq` is shared with the DeepSeek layout (same VQ, other spelling).

One behaviour differs on purpose: transformers' `JanusVQVAE.encode` picks the codebook row
nearest to the raw latent, while DeepSeek's VQ-16 (`codebook_l2_norm=True`) l2-normalises both
latent and codebook first. The ids can differ; we follow DeepSeek, whose code trained and
published these weights (decoding normalises the codebook in both, so decoded pixels agree).
Also, transformers 5 ties `lm_head` to the input embeddings when `tie_word_embeddings` is true (its
default) and then saves it once: a missing `lm_head.weight` is rebuilt from the embeddings, but a
stored one (Janus's head is untied) is always used.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ..configuration import JANUS_SYSTEM_PROMPT, JanusLikeConfig
from ..errors import CheckpointError, one_line
from .settings import ImageSettings, config_errors, load_tokenizer, read_json, require, require_sizes, text_config_dict

NAME = "hf_janus"
DESCRIPTION = "transformers' Janus (model_type 'janus')"
MODEL_TYPE = "janus"
TIED_FALLBACKS = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}

# LlamaGen VQ blocks (transformers' spelling) -> diffusers Encoder/Decoder; applied in order, all that match.
_VQ_RENAMES = [
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.", r"encoder.down_blocks.\1.attentions.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    (r"^decoder\.up\.(\d+)\.attn\.(\d+)\.", r"decoder.up_blocks.\1.attentions.\2."),
    (r"^decoder\.up\.(\d+)\.upsample\.", r"decoder.up_blocks.\1.upsamplers.0."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"\.nin_shortcut\.", r".conv_shortcut."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."),
    (r"(attentions\.\d+)\.(q|k|v)\.", r"\1.to_\2."),
    (r"(attentions\.\d+)\.proj_out\.", r"\1.to_out.0."),
]
_VQ_SAME = re.compile(r"^(quant_conv|post_quant_conv|(encoder|decoder)\.conv_(in|out))\.")


def codebook_tensors(prefix: str, weight: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """LlamaGen's raw codebook -> VectorQuantize's buffers. Janus l2-normalises the codebook at
    every use; storing it normalised (with unit EMA counts) gives the same codes and vectors."""
    embed = F.normalize(weight.float(), dim=-1).to(weight.dtype)[None]
    return [
        (f"{prefix}_codebook.embed", embed),
        (f"{prefix}_codebook.embed_avg", embed.clone()),
        (f"{prefix}_codebook.cluster_size", torch.ones(1, weight.shape[0], dtype=weight.dtype, device=weight.device)),
        (f"{prefix}_codebook.initted", torch.tensor(True)),
    ]


def map_vq(key: str, tensor: torch.Tensor, prefix: str = "vq.") -> list[tuple[str, torch.Tensor]] | None:
    """A VQ tensor in transformers' LlamaGen spelling -> this package's (name, tensor) pairs."""
    if key == "quantize.embedding.weight":
        return codebook_tensors(prefix + "quantize.", tensor)
    if key == "quantize.codebook_used":  # LlamaGen's usage statistics, not a weight
        return []
    new = key
    for pattern, repl in _VQ_RENAMES:
        new = re.sub(pattern, repl, new)
    if new == key and not _VQ_SAME.match(key):
        return None
    if re.search(r"attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", new) and tensor.dim() == 4:
        tensor = tensor[:, :, 0, 0]  # 1x1 conv -> linear
    return [(prefix + new, tensor)]


_RENAMES = [
    (
        r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection_layer\.",
        r"vision_model.encoder.layers.\1.self_attn.out_proj.",
    ),
    (r"^model\.vision_model\.", r"vision_model."),
    (r"^model\.generation_head\.proj_out\.", r"gen_head.output_mlp_projector."),
    (r"^model\.generation_head\.vision_head\.", r"gen_head.vision_head."),
    (r"^model\.generation_embeddings\.", r"gen_embed."),
    (r"^model\.language_model\.", r"language_model.model."),
    (r"^lm_head\.", r"language_model.lm_head."),
]


def matches(raw: dict) -> bool:
    """Whether a config.json is in this layout."""
    return raw.get("model_type") == MODEL_TYPE


def map_tensor(key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    """One transformers-Janus tensor -> this package's (name, tensor) pairs; None if unknown."""
    if key.startswith("model.vqmodel."):
        return map_vq(key[len("model.vqmodel.") :], tensor)
    aligner = re.match(r"^model\.(aligner|generation_aligner)\.(?:fc1|hidden_layers\.(\d+))\.", key)
    if aligner:  # fc1 / hidden_layers.K -> the Sequential index in Janus's mlp_gelu projector
        name = "aligner" if aligner.group(1) == "aligner" else "gen_aligner"
        layer = 0 if aligner.group(2) is None else 2 * int(aligner.group(2)) + 2
        return [(f"{name}.layers.{layer}.{key[aligner.end() :]}", tensor)]
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return [(new, tensor)]
    return None


def model_config(raw: dict) -> JanusLikeConfig:
    """transformers' JanusConfig (defaults filled by transformers itself) -> the architecture part
    of a JanusLikeConfig (no tokenizer needed)."""
    from transformers import JanusConfig

    try:
        hf = JanusConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
    except Exception as e:
        raise CheckpointError(f"config.json is not a valid transformers Janus config: {one_line(e)}") from e
    text, vision, vq = hf.text_config, hf.vision_config, hf.vq_config
    require_sizes(text, "text_config")
    hidden = text.hidden_size
    require(not vision.use_qk_norm, "vision_config.use_qk_norm", vision.use_qk_norm, "false (SigLIP has no qk-norm)")
    require(vision.attention_bias, "vision_config.attention_bias", vision.attention_bias, "true")
    require(not vq.double_latent, "vq_config.double_latent", vq.double_latent, "false")
    for field, value in (("vision_config.hidden_act", vision.hidden_act), ("vq_config.hidden_act", vq.hidden_act)):
        require(value == "gelu", field, value, "'gelu' (Janus's exact GELU)")
    for field, value in (
        ("vision_config.projection_dim", vision.projection_dim),
        ("vq_config.image_token_embed_dim", vq.image_token_embed_dim),
        ("vq_config.projection_dim", vq.projection_dim),
    ):
        require(value == hidden, field, value, f"the language model's hidden_size {hidden}")
    image_size, patch_size = _side(vision.image_size), _side(vision.patch_size)
    require(patch_size >= 1, "vision_config.patch_size", vision.patch_size, "a positive integer")
    vision_config = dict(
        hidden_size=vision.hidden_size,
        intermediate_size=int(vision.hidden_size * vision.mlp_ratio),
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        num_channels=vision.num_channels,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="gelu",
        layer_norm_eps=vision.layer_norm_eps,
        attention_dropout=vision.attention_dropout,
        vision_use_head=False,
    )
    vq_config = dict(
        in_channels=vq.in_channels,
        out_channels=vq.out_channels,
        base_channels=vq.base_channels,
        channel_multiplier=list(vq.channel_multiplier),
        num_res_blocks=vq.num_res_blocks,
        norm_num_groups=32,
        z_channels=vq.latent_channels,
        codebook_size=vq.num_embeddings,
        codebook_dim=vq.embed_dim,
    )
    # transformers decodes a grid as wide as the vision grid (vq_config.num_patches)
    gen_image_size = (image_size // patch_size) * 2 ** (len(vq.channel_multiplier) - 1)
    return JanusLikeConfig(
        text_config=text_config_dict(text),
        vision_config=vision_config,
        vq_config=vq_config,
        aligner_depth=vision.depth,
        gen_aligner_depth=vq.num_hidden_layers,
        gen_head_hidden_size=vq.projection_dim,
        gen_image_size=gen_image_size,
    )


def build_config(
    path: Path, raw: dict, chat_roles: tuple[str, str] | None = None
) -> tuple[JanusLikeConfig, object, ImageSettings]:
    """config.json plus the JanusProcessor files saved beside it -> JanusLikeConfig (with the chat
    settings of transformers' converted Janus), the tokenizer and the image settings. `chat_roles`
    (user, assistant) overrides the converted template's roles."""
    with config_errors(path / "config.json"):
        config = model_config(raw)
    tokenizer = load_tokenizer(path)
    processor_config = read_json(path / "processor_config.json")
    settings = ImageSettings.from_preprocessor(
        processor_config.get("image_processor") or read_json(path / "preprocessor_config.json"),
        config.vision_config.image_size,
    )
    num_tokens = processor_config.get("num_image_tokens", config.num_image_tokens)
    require(
        num_tokens == config.num_image_tokens,
        "processor_config num_image_tokens",
        num_tokens,
        f"{config.num_image_tokens} (the vision encoder's patch grid)",
    )
    config.image_token = getattr(tokenizer, "image_token", None) or "<image_placeholder>"
    config.image_start_token = getattr(tokenizer, "boi_token", None) or "<begin_of_image>"
    config.image_end_token = getattr(tokenizer, "eoi_token", None) or "<end_of_image>"
    config.pad_token = tokenizer.pad_token or "<｜▁pad▁｜>"
    # the converted chat template hard-codes DeepSeek's Pro roles; the system prompt is prepended
    # when the processor's use_default_system_prompt is set (as in the converted Janus repos)
    config.user_role, config.assistant_role = chat_roles or ("<|User|>", "<|Assistant|>")
    config.system_prompt = JANUS_SYSTEM_PROMPT if processor_config.get("use_default_system_prompt", False) else ""
    return config, tokenizer, settings


def fallbacks(raw: dict) -> dict[str, str]:
    """Tensors that may be absent because transformers tied them: target <- source."""
    return TIED_FALLBACKS if raw.get("tie_word_embeddings", True) else {}


def _side(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)
