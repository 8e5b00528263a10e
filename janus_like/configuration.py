"""Configurations: the VQ image tokenizer and the whole any-to-any model.

Both are `transformers` configs (dataclasses in transformers 5), so they save to and load from
`config.json` and nest the decoder's and SigLIP's own configs unchanged.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, PreTrainedConfig, SiglipVisionConfig
from transformers.configuration_utils import SubConfigSpec

from .errors import SettingsError, is_int, is_number

# The weight dtypes the CLI, pipeline, trainer and converter accept by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# DeepSeek Janus's default system prompt for image understanding (their conversation template).
JANUS_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)


class JanusLikeVQConfig(PreTrainedConfig):
    r"""The VQ image tokenizer: a `diffusers` Encoder/Decoder around a cosine-similarity codebook.

    The defaults are Janus / LlamaGen VQ-16: 128·[1,1,2,2,4] channels, two res-blocks per level,
    attention at the lowest resolution, 16× downsampling, 16384 codes of dimension 8.
    `patch_encoder` swaps the encoder for one that reads each patch alone (the decoder stays).
    """

    model_type = "janus_like_vq"

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_multiplier: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    norm_num_groups: int = 32
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_dim: int = 8
    commitment_weight: float = 0.25
    codebook_decay: float = 0.99
    threshold_ema_dead_code: float = 0.0
    initializer_range: float = 0.02
    patch_encoder: bool = False  # True: each code from its own patch alone (vq.PatchEncoder; the embedded model)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multiplier) - 1)


class JanusLikeConfig(PreTrainedConfig):
    r"""The whole model: decoder (any causal LM), SigLIP encoder, VQ tokenizer, aligners, heads.

    Special tokens are kept by name (looked up in the tokenizer) and by id (filled in once the
    tokenizer is known). The chat fields describe the DeepSeek SFT template, which Janus
    checkpoints need verbatim and which composed models use too.
    """

    model_type = "janus_like"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "vision_config": SiglipVisionConfig,
        "vq_config": JanusLikeVQConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    vq_config: dict | PreTrainedConfig | None = None

    # glue between the parts (Janus: mlp_gelu projectors of depth 2, gen head 2048 wide)
    aligner_depth: int = 2
    gen_aligner_depth: int = 2
    gen_head_hidden_size: int = 2048
    gen_image_size: int = 384
    default_cfg_scale: float = 5.0  # guidance used when a call gives none (Janus and the embedded model: 5)
    default_cfg_plausibility: float = 0.0  # GenerationSettings.cfg_plausibility when a call gives none (Janus: 0)

    # special tokens, by name and by id
    image_start_token: str = "<begin_of_image>"
    image_end_token: str = "<end_of_image>"
    image_token: str = "<image_placeholder>"
    pad_token: str = "<｜▁pad▁｜>"
    image_start_token_id: int | None = None
    image_end_token_id: int | None = None
    image_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    # chat template (DeepSeek SFT format)
    user_role: str = "<|User|>"
    assistant_role: str = "<|Assistant|>"
    turn_separator: str = "\n\n"
    system_prompt: str = JANUS_SYSTEM_PROMPT

    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    @property
    def num_image_tokens(self) -> int:
        """Placeholder positions one understanding image occupies."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def gen_grid_size(self) -> int:
        """Side of the VQ code grid of a generated image."""
        return self.gen_image_size // self.vq_config.downsample_factor

    @property
    def num_gen_tokens(self) -> int:
        """VQ codes one generated image occupies."""
        return self.gen_grid_size**2

    def get_text_config(self, *args, **kwargs) -> PreTrainedConfig:
        return self.text_config


# transformers' AutoConfig resolves model_type "janus_like" / "janus_like_vq" (nested configs, config.json)
AutoConfig.register(JanusLikeConfig.model_type, JanusLikeConfig, exist_ok=True)
AutoConfig.register(JanusLikeVQConfig.model_type, JanusLikeVQConfig, exist_ok=True)


# JanusLikeConfig fields `from_parts` may set (the parts bring their own configs)
COMPOSE_SETTINGS = set(JanusLikeConfig.__annotations__) - {"text_config", "vision_config", "vq_config"}
# the ranges GenerationSettings takes for these settings (its MAX_SCALE; that module imports this one)
DEFAULT_RANGES = {"default_cfg_scale": (0, 1000), "default_cfg_plausibility": (0, 1)}
COMPOSE_SIZES = ("aligner_depth", "gen_aligner_depth", "gen_head_hidden_size", "gen_image_size")


def check_compose_settings(settings, where: str) -> None:
    """Only JanusLikeConfig's own fields, of their types: a transformers config takes any keyword,
    silently, and a size of 0 or 16.5 would fail deep inside the model's construction."""
    unknown = set(settings) - COMPOSE_SETTINGS
    if unknown:
        raise SettingsError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; accepted: {', '.join(sorted(COMPOSE_SETTINGS))}"
        )
    for key, value in settings.items():
        if key in COMPOSE_SIZES and not (is_int(value) and value >= 1):
            raise SettingsError(f"{where}: {key} = {value!r} is not accepted; it must be an integer >= 1")
        low, high = DEFAULT_RANGES.get(key, (None, None))
        if low is not None and not (is_number(value) and low <= value <= high):
            raise SettingsError(f"{where}: {key} = {value!r} is not accepted; it must be a number from {low} to {high}")
        if isinstance(JanusLikeConfig.__dataclass_fields__[key].default, str) and not isinstance(value, str):
            raise SettingsError(f"{where}: {key} = {value!r} is not accepted; it must be a string")


def check_image_fits(config: JanusLikeConfig, where: str) -> None:
    """The generated image must tile the VQ's grid and its codes fit the LM's context."""
    factor = config.vq_config.downsample_factor
    if config.gen_image_size % factor:
        raise SettingsError(
            f"{where}: gen_image_size = {config.gen_image_size} is not a multiple of {factor}, the "
            "VQ tokenizer's downsampling"
        )
    context = getattr(config.text_config, "max_position_embeddings", None)
    if context is not None and config.num_gen_tokens >= context:
        raise SettingsError(
            f"{where}: gen_image_size = {config.gen_image_size} gives {config.num_gen_tokens} codes "
            f"an image ({config.gen_grid_size}² at the VQ's downsampling {factor}), more than the LM's "
            f"context of {context} positions holds; use a smaller gen_image_size"
        )
