"""Tiny models, tokenizers and images for tests, benchmarks and examples: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from .configuration import JanusLikeConfig
from .evaluation.shapes import Scene, render
from .modeling import JanusLikeForConditionalGeneration
from .processor import JanusLikeProcessor

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE_TOKENS = ("<image_placeholder>", "<begin_of_image>", "<end_of_image>")


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges (one token per byte) and Janus's special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.add_tokens(list(IMAGE_TOKENS), special_tokens=True)
    return fast


def tiny_config(vocab_size: int, **overrides) -> JanusLikeConfig:
    """A few-MB model: 2-layer Llama, 1-layer SigLIP on 32² images (16 tokens), VQ with a 4×
    downsample on 16² images (16 codes of a 64-entry codebook)."""
    text = dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        hidden_act="gelu",
        vision_use_head=False,
    )
    vq = dict(
        base_channels=16,
        channel_multiplier=[1, 1, 2],
        num_res_blocks=1,
        norm_num_groups=8,
        z_channels=16,
        codebook_size=64,
        codebook_dim=8,
    )
    for key, sub in (("text_config", text), ("vision_config", vision), ("vq_config", vq)):
        sub.update(overrides.pop(key, {}))
    params = dict(gen_head_hidden_size=64, gen_image_size=16, system_prompt="")
    params.update(overrides)
    return JanusLikeConfig(text_config=text, vision_config=vision, vq_config=vq, **params)


def tiny_model(seed: int = 0, **overrides) -> tuple[JanusLikeForConditionalGeneration, JanusLikeProcessor]:
    """A randomly initialised tiny model and its processor; the same seed gives the same weights."""
    tokenizer = byte_level_tokenizer()
    config = tiny_config(len(tokenizer), **overrides)
    processor = JanusLikeProcessor(tokenizer, config)
    processor.fill_token_ids(config)
    torch.manual_seed(seed)
    model = JanusLikeForConditionalGeneration(config).eval()
    return model, processor


def widen_weights(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Redraw every weight matrix from N(0, std²): default inits give a tiny model nearly constant
    outputs, which makes comparisons of its outputs weak."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, std)
    return model


def shape_image(
    shape: str = "circle", color: str = "red", size: int = 64, position: str = "center", object_size: str = "large"
) -> Image.Image:
    """A one-object scene of the shapes world (janus_like.evaluation.shapes), `size`² px, for tests and examples."""
    return render(Scene.single(color, shape, object_size, position), size)


def write_image(path: Path, image: Image.Image | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or shape_image()).save(path)
    return path


def random_image(size: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so that the next Trainer in this process builds its
    Accelerator afresh (another precision, another process count)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
