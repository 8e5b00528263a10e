"""`JanusLikeForConditionalGeneration.from_parts`: a new model composed from pretrained parts (any
causal LM and its tokenizer, a SigLIP vision encoder, a VQ tokenizer), each loaded strictly."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, SiglipVisionModel

from .checkpoint.own import held_load_report, load_report_rows, show_load_report
from .checkpoint.settings import refuse_custom_code
from .configuration import JanusLikeConfig, JanusLikeVQConfig, check_compose_settings, check_image_fits
from .errors import CheckpointError, one_line
from .processor import JanusLikeProcessor
from .vq import JanusLikeVQModel


def compose(
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
    """A `cls` model (and, with `return_processor`, its processor) from the parts; see `from_parts`."""
    check_compose_settings(config_overrides, "from_parts")
    for name, path in (("llm", llm), ("vision", vision), ("vq", vq)):
        _require_local_or_hub(name, path)
    if Path(llm).expanduser().is_dir():
        refuse_custom_code(Path(llm).expanduser())
    try:  # trust_remote_code=False: transformers would otherwise ask to run a folder's own code
        tokenizer = AutoTokenizer.from_pretrained(llm, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"llm={llm}: no tokenizer could be loaded from it ({one_line(e)})") from e
    load_llm = functools.partial(AutoModelForCausalLM.from_pretrained, trust_remote_code=False)
    language_model = _load_part("llm", llm, load_llm, "a causal LM", dtype)
    vision_model = _load_part("vision", vision, SiglipVisionModel.from_pretrained, "a SigLIP vision encoder", dtype)
    if vq is not None:
        vq_model = _load_part("vq", vq, JanusLikeVQModel.from_pretrained, "a janus_like VQ tokenizer", dtype)
    else:
        if vq_config is None or isinstance(vq_config, dict):
            vq_config = JanusLikeVQConfig(**(vq_config or {}))
        vq_model = JanusLikeVQModel(vq_config)
    # composing the config resets its parts' attention implementation to None, which transformers runs
    # as unmasked attention: each part gets back the one it was loaded with
    attention = {
        "text_config": language_model.config._attn_implementation,
        "vision_config": vision_model.config._attn_implementation,
    }
    config = JanusLikeConfig(
        text_config=language_model.config,
        vision_config=vision_model.config,
        vq_config=vq_model.config,
        **config_overrides,
    )
    check_image_fits(config, "from_parts")
    new_tokens = [config.image_start_token, config.image_end_token, config.image_token]
    if tokenizer.pad_token is None:
        new_tokens.append(config.pad_token)
    else:
        config.pad_token = tokenizer.pad_token
    tokenizer.add_tokens(new_tokens, special_tokens=True)
    if len(tokenizer) > language_model.get_input_embeddings().weight.shape[0]:
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config.text_config = language_model.config
    model = cls(config, language_model=language_model, vision_model=vision_model, vq=vq_model)
    model.set_attn_implementation(attention)
    _require_causal(model.language_model, llm)  # asked of the composed model: what training will run
    processor = JanusLikeProcessor(tokenizer, config)
    processor.fill_token_ids(config)
    if dtype is not None:
        model.to(dtype)
    return (model, processor) if return_processor else model


def _require_local_or_hub(name: str, path) -> None:
    """A part is an existing folder or a hub id ("org/name"): a missing local path is named as
    such, rather than tried on the hub and reported as a network failure."""
    if path is None or Path(path).expanduser().exists():
        return
    text = os.fspath(path)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{name}={text}: no such folder (and not a hub id of the form org/name)")


def _load_part(name: str, path, load, kind: str, dtype: torch.dtype | None) -> PreTrainedModel:
    """One pretrained part for `from_parts`, loaded strictly: transformers would build a folder of
    another kind (an LLM given as the VQ) with fresh weights and only log what was missing. Its
    LOAD REPORT goes into our one-line error, or is shown as usual when the part loads."""
    with held_load_report() as held:
        try:
            model, info = load(path, dtype=dtype, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            rows = load_report_rows(held)
            raise CheckpointError(
                f"{name}={path}: cannot load it as {kind} ({one_line(e)})" + (f"; the tensors: {rows}" if rows else "")
            ) from e
    missing = sorted(info["missing_keys"])
    if missing:
        raise CheckpointError(
            f"{name}={path} is not {kind}: {len(missing)} of its tensors are missing (e.g. {', '.join(missing[:3])})"
        )
    show_load_report(held)  # e.g. unexpected tensors a part does not use (a full SigLIP as the vision tower)
    return model


@torch.no_grad()
def _require_causal(model: PreTrainedModel, path) -> None:
    """The LM must be a causal decoder: training and generation pass it no mask and rely on a position
    never seeing later ones. Asked of the model itself (a config does not say it: BERT loads as a
    causal LM and attends both ways): change the second of two tokens, the first one's logits stay."""
    ids = torch.tensor([[0, 1], [0, 2]], device=model.device)
    logits = model(input_ids=ids).logits.float()
    scale = logits.abs().max().item() + 1e-6
    if not torch.allclose(logits[0, 0], logits[1, 0], rtol=0, atol=1e-3 * scale):
        raise CheckpointError(
            f"llm={path}: {type(model).__name__} lets a token see the tokens after it; "
            "from_parts needs a causal decoder LM (Llama, Qwen2, Gemma, Mistral, …)"
        )
