"""DeepSeek's original Janus / Janus-Pro layout (deepseek-ai/Janus-Pro-1B, -7B, Janus-1.3B).

Their config.json names each part (`language_config`, `vision_config`, `aligner_config`,
`gen_vision_config`, `gen_aligner_config`, `gen_head_config`); the SigLIP tower and the VQ are
picked by name from their code's model tables, reproduced here. Tensors keep DeepSeek's names
except the timm SigLIP tower (fused `qkv` split into q/k/v, transformers' SigLIP names) and the
LlamaGen VQ, renamed to transformers' spelling and then mapped by `hf_janus.map_vq`.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import torch
from transformers import AutoConfig

from ..configuration import JANUS_SYSTEM_PROMPT, JanusLikeConfig
from ..errors import CheckpointError
from .hf_janus import map_vq
from .settings import (
    ImageSettings,
    config_errors,
    load_tokenizer,
    read_json,
    require,
    require_int,
    require_sizes,
    text_config_dict,
)

PARTS = (
    "language_config",
    "vision_config",
    "aligner_config",
    "gen_vision_config",
    "gen_aligner_config",
    "gen_head_config",
)
# The class each part's `cls` names in DeepSeek's model_name_to_cls (gen_vision_config: VQ_VARIANTS)
PART_CLASSES = {
    "vision_config": ("CLIPVisionTower",),
    "aligner_config": ("MlpProjector",),
    "gen_aligner_config": ("MlpProjector",),
    "gen_head_config": ("vision_head",),
}

# DeepSeek's siglip_vit.SigLIP_MODEL_CONFIG entry that Janus uses (tests register tiny ones).
SIGLIP_VARIANTS: dict[str, dict] = {
    "siglip_large_patch16_384": dict(image_size=384, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4),
}
# LlamaGen's VQ_models entry Janus uses: VQ_16() takes no arguments, so the whole VQ comes from
# here (ModelArgs defaults); image_size is what DeepSeek's generation scripts decode (img_size=384).
VQ_VARIANTS: dict[str, dict] = {
    "VQ-16": dict(
        base_channels=128,
        channel_multiplier=[1, 1, 2, 2, 4],
        num_res_blocks=2,
        z_channels=256,
        codebook_size=16384,
        codebook_dim=8,
        image_size=384,
    ),
}
# The chat roles each release's own scripts write into the prompt text, whatever the tokenizer makes of
# them (deepseek-ai/Janus: the conversation's "role" strings go into the prompt verbatim, see
# janus/models/processing_vlm.py apply_sft_template_for_multi_turn_prompts). Evidence: docs/checkpoints.md.
PRO_ROLES = ("<|User|>", "<|Assistant|>")  # Janus-Pro: README.md, demo/app_januspro.py
PLAIN_ROLES = ("User", "Assistant")  # Janus-1.3B: README.md, inference.py, demo/app.py; JanusFlow: app_janusflow.py
RELEASE_ROLES = {"janus-pro": PRO_ROLES, "janus-1.3b": PLAIN_ROLES, "janusflow": PLAIN_ROLES}
# a release named in a checkpoint's folder or hub id (Janus-Pro-7B, janus_pro_1b, JanusFlow-1.3B, Janus-1.3B)
_RELEASE_NAMES = [
    (re.compile(pattern, re.IGNORECASE), release)
    for pattern, release in (
        (r"janus[-_ ]?pro", "janus-pro"),
        (r"janus[-_ ]?flow", "janusflow"),
        (r"janus[-_ ]?1\.3b", "janus-1.3b"),
    )
]
# conversation.py's templates by sft_format: "deepseek_old" is the pre-Pro template (roles User/Assistant)
_TEMPLATE_RELEASES = {"deepseek_old": "janus-1.3b"}
logger = logging.getLogger("janus_like.checkpoint")

_VISION_RENAMES = [
    (r"^vision_model\.vision_tower\.patch_embed\.proj\.", r"vision_model.embeddings.patch_embedding."),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.norm(1|2)\.", r"vision_model.encoder.layers.\1.layer_norm\2."),
    (
        r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.proj\.",
        r"vision_model.encoder.layers.\1.self_attn.out_proj.",
    ),
    (r"^vision_model\.vision_tower\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
    (r"^vision_model\.vision_tower\.norm\.", r"vision_model.post_layernorm."),
    (r"^(aligner|gen_aligner|gen_head|gen_embed|language_model)\.", r"\1."),  # same names here
]
# LlamaGen's own spelling -> transformers' spelling of the same VQ
_VQ_TO_HF = [
    (r"^encoder\.conv_blocks\.", r"encoder.down."),
    (r"^decoder\.conv_blocks\.", r"decoder.up."),
    (r"^((?:encoder\.down|decoder\.up)\.\d+)\.res\.", r"\1.block."),
    (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn_1."),
    (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.block_2."),
]
_QKV = re.compile(r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_DROPPED = re.compile(r"^vision_model\.vision_tower\.attn_pool\.|rotary_emb\.inv_freq$")


NAME = "deepseek"
DESCRIPTION = "DeepSeek's Janus / Janus-Pro (config.json with language_config and gen_vision_config)"


def matches(raw: dict) -> bool:
    """Whether a config.json is in this layout."""
    return "language_config" in raw and "gen_vision_config" in raw


def map_tensor(key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    """One DeepSeek tensor -> this package's (name, tensor) pairs; [] to drop; None if unknown."""
    if _DROPPED.search(key):  # the tower's unused attention-pool head (ignore_head=True)
        return []
    if key.startswith("gen_vision_model."):
        vq_key = key[len("gen_vision_model.") :]
        for pattern, repl in _VQ_TO_HF:
            vq_key = re.sub(pattern, repl, vq_key)
        return map_vq(vq_key, tensor)
    if key == "vision_model.vision_tower.pos_embed":
        return [("vision_model.embeddings.position_embedding.weight", tensor[0])]
    qkv = _QKV.match(key)
    if qkv:  # timm's fused projection, rows ordered q | k | v
        layer, kind = qkv.groups()
        return [
            (f"vision_model.encoder.layers.{layer}.self_attn.{name}_proj.{kind}", part)
            for name, part in zip("qkv", tensor.chunk(3, dim=0))
        ]
    for pattern, repl in _VISION_RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return [(new, tensor)]
    return None


def fallbacks(raw: dict) -> dict[str, str]:
    return {}


def _section(raw: dict, part: str) -> dict:
    section = raw.get(part)
    if not isinstance(section, dict):
        raise CheckpointError(
            f"unsupported checkpoint config: {part} = {section!r:.60}; accepted: an object "
            "(as in DeepSeek's config.json)"
        )
    return section


def _params(raw: dict, part: str) -> dict:
    """A part's constructor arguments: `params` of a section (the language section is flat)."""
    section = _section(raw, part)
    if part == "language_config":
        return section
    params = section.get("params", {})
    require(isinstance(params, dict), f"{part}.params", params, "an object of constructor arguments")
    return params


def _mlp_gelu(raw: dict, part: str, input_dim: int, hidden: int) -> int:
    """Check an MlpProjector config against its neighbours; return its depth."""
    params = _params(raw, part)
    require(
        params.get("projector_type", "mlp_gelu") == "mlp_gelu",
        f"{part}.params.projector_type",
        params.get("projector_type"),
        "'mlp_gelu'",
    )
    require(params.get("input_dim") == input_dim, f"{part}.params.input_dim", params.get("input_dim"), str(input_dim))
    require(
        params.get("n_embed") == hidden,
        f"{part}.params.n_embed",
        params.get("n_embed"),
        f"the language model's hidden_size {hidden}",
    )
    depth = params.get("depth", 1)
    require(isinstance(depth, int) and depth >= 1, f"{part}.params.depth", depth, "an integer >= 1")
    return depth


def model_config(raw: dict) -> JanusLikeConfig:
    """DeepSeek's config.json -> the architecture part of a JanusLikeConfig (no tokenizer needed)."""
    missing = [p for p in PARTS if p not in raw]
    if missing:
        raise CheckpointError(f"config.json looks like DeepSeek's Janus layout but lacks {', '.join(missing)}")
    for part, classes in PART_CLASSES.items():
        cls = _section(raw, part).get("cls")
        require(cls in classes, f"{part}.cls", cls, ", ".join(map(repr, classes)))
    language = dict(_params(raw, "language_config"))
    model_type = language.pop("model_type", "llama")
    require(model_type == "llama", "language_config.model_type", model_type, "'llama'")
    text = AutoConfig.for_model("llama", **language)  # DeepSeek builds LlamaConfig(**language_config)
    require_sizes(text, "language_config")
    hidden = text.hidden_size

    vision = _params(raw, "vision_config")
    name = vision.get("model_name")
    require(name in SIGLIP_VARIANTS, "vision_config.params.model_name", name, ", ".join(map(repr, SIGLIP_VARIANTS)))
    tower = SIGLIP_VARIANTS[name]
    select_layer = require_int(vision, "select_layer", -1, "vision_config.params.select_layer")
    # DeepSeek builds only the blocks up to select_layer, then the final norm (create_siglip_vit)
    layers = min(tower["layers"], tower["layers"] + select_layer + 1 if select_layer <= 0 else select_layer)
    image_size = require_int(vision, "image_size", tower["image_size"], "vision_config.params.image_size", minimum=1)
    vision_config = dict(
        hidden_size=tower["width"],
        intermediate_size=int(tower["width"] * tower["mlp_ratio"]),
        num_hidden_layers=layers,
        num_attention_heads=tower["heads"],
        image_size=image_size,
        patch_size=tower["patch_size"],
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )

    gen_vision = _section(raw, "gen_vision_config")
    require(
        gen_vision.get("cls") in VQ_VARIANTS,
        "gen_vision_config.cls",
        gen_vision.get("cls"),
        ", ".join(map(repr, VQ_VARIANTS)),
    )
    vq = dict(VQ_VARIANTS[gen_vision["cls"]])
    gen_image_size = vq.pop("image_size")
    gen_params = _params(raw, "gen_vision_config")
    for field, key in (("image_token_size", "codebook_size"), ("n_embed", "codebook_dim")):
        require(
            gen_params.get(field, vq[key]) == vq[key],
            f"gen_vision_config.params.{field}",
            gen_params.get(field),
            f"{vq[key]} (the {gen_vision['cls']} codebook)",
        )
    head = _params(raw, "gen_head_config")
    require(head.get("n_embed") == hidden, "gen_head_config.params.n_embed", head.get("n_embed"), str(hidden))
    require(
        head.get("image_token_size") == vq["codebook_size"],
        "gen_head_config.params.image_token_size",
        head.get("image_token_size"),
        str(vq["codebook_size"]),
    )
    head_hidden = require_int(head, "image_token_embed", hidden, "gen_head_config.params.image_token_embed", minimum=1)
    return JanusLikeConfig(
        text_config=text_config_dict(text),
        vision_config=vision_config,
        vq_config=vq,
        aligner_depth=_mlp_gelu(raw, "aligner_config", tower["width"], hidden),
        gen_aligner_depth=_mlp_gelu(raw, "gen_aligner_config", vq["codebook_dim"], hidden),
        gen_head_hidden_size=head_hidden,
        gen_image_size=gen_image_size,
        # VLChatProcessor.system_prompt, the same in every release; their image-generation scripts pass ""
        system_prompt=JANUS_SYSTEM_PROMPT,
    )


def build_config(
    path: Path, raw: dict, chat_roles: tuple[str, str] | None = None
) -> tuple[JanusLikeConfig, object, ImageSettings]:
    """DeepSeek's config.json, processor_config.json and preprocessor_config.json -> JanusLikeConfig
    (with their chat settings), the tokenizer (with VLChatProcessor's runtime addition) and image settings.
    `chat_roles` (user, assistant) overrides the roles the release would have."""
    with config_errors(path / "config.json"):
        config = model_config(raw)
    tokenizer = load_tokenizer(path)
    processor_config = read_json(path / "processor_config.json")
    sft_format = processor_config.get("sft_format", "deepseek")
    require(
        sft_format in ("deepseek", "deepseek_old"),
        "processor_config sft_format",
        sft_format,
        "'deepseek' or 'deepseek_old'",
    )
    num_tokens = processor_config.get("num_image_tokens", config.num_image_tokens)
    require(
        num_tokens == config.num_image_tokens,
        "processor_config num_image_tokens",
        num_tokens,
        f"{config.num_image_tokens} (the vision encoder's patch grid)",
    )
    config.image_token = processor_config.get("image_tag", "<image_placeholder>")
    # their generation prompt is the SFT text + image_start_tag, tokenized at once; an added token splits
    # the text, so appending its id is the same (generation_inference.py, demo/app_januspro.py)
    config.image_start_token = processor_config.get("image_start_tag", "<begin_of_image>")
    config.image_end_token = processor_config.get("image_end_tag", "<end_of_image>")
    # the unconditional twin's pad: VLChatProcessor.pad_id looks pad_tag up by name in every release since
    # the Janus-Pro commit 95bde08 (before it: tokenizer.pad_token_id, else EOS); the vocabulary must hold it
    config.pad_token = processor_config.get("pad_tag", "<｜▁pad▁｜>")
    if config.image_token not in tokenizer.get_vocab():  # VLChatProcessor adds it at start-up (Janus-1.3B lacks it)
        tokenizer.add_tokens([config.image_token], special_tokens=True)
    config.user_role, config.assistant_role = chat_roles or release_roles(path, raw, sft_format)
    vision = _params(raw, "vision_config")
    settings = ImageSettings.from_preprocessor(
        read_json(path / "preprocessor_config.json"),
        config.vision_config.image_size,
        vision.get("pixel_mean"),
        vision.get("pixel_std"),
    )
    return config, tokenizer, settings


def release_of(path: Path, raw: dict, sft_format: str) -> str | None:
    """The Janus release a checkpoint is, from what names it: its processor's template (sft_format),
    its folder (or, in the hub cache, its repo folder models--org--name), config.json's _name_or_path;
    None when nothing does. The vocabulary is no evidence: DeepSeek's scripts write the roles as text."""
    if sft_format in _TEMPLATE_RELEASES:
        return _TEMPLATE_RELEASES[sft_format]
    path = path.absolute()
    names = [path.name]
    if path.parent.name == "snapshots":  # huggingface_hub's cache: models--{org}--{name}/snapshots/{revision}
        names.append(path.parent.parent.name)
    names.append(str(raw.get("_name_or_path") or ""))
    for name in names:
        found = sorted((m.start(), release) for pattern, release in _RELEASE_NAMES if (m := pattern.search(name)))
        if found:
            return found[0][1]
    return None


def release_roles(path: Path, raw: dict, sft_format: str) -> tuple[str, str]:
    """The chat roles of the release the checkpoint is; Janus-Pro's (the current release) when it
    cannot be told, said once per checkpoint in the log."""
    release = release_of(path, raw, sft_format)
    if release is None:
        _report_unidentified(str(path.absolute()))
        return PRO_ROLES
    return RELEASE_ROLES[release]


@functools.cache
def _report_unidentified(path: str) -> None:
    """The load's note that the release was not told: once per checkpoint (model and processor both load it)."""
    logger.warning(
        "%s: no Janus release named in its folder or config (Janus-Pro-1B/-7B, Janus-1.3B, JanusFlow-1.3B); "
        "using Janus-Pro's chat roles %s / %s. For Janus-1.3B pass chat_roles='janus-1.3b' "
        "(roles User / Assistant) to from_pretrained, or --chat-roles janus-1.3b on the command line",
        path,
        *PRO_ROLES,
    )
