"""Any transformers causal LM as the decoder (docs/ARCHITECTURE.md §1): for each family the task-masked loss
trains, and the engine's cached greedy text and guided image codes equal cache-free forwards, also
for sliding-window decoders run far past their window."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

from janus_like import JanusLikeForConditionalGeneration
from janus_like.generation import GenerationEngine, GenerationSettings, Request
from janus_like.layout import GEN_IMAGE, TEXT
from janus_like.testing import byte_level_tokenizer, shape_image, tiny_model

# llama is everywhere else in the suite; these are the other families a user is likely to compose with
FAMILIES = ["qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "olmo2", "granite", "qwen3_moe"]
NO_SPECIAL_IDS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)  # defaults lie outside a tiny vocab


def _family_model(model_type: str, **text_config):
    return tiny_model(seed=1, text_config=dict(model_type=model_type, head_dim=16, **text_config, **NO_SPECIAL_IDS))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_decoder_family_trains_and_generates_like_cache_free_forwards(model_type, records):
    model, processor = _family_model(model_type)
    assert model.language_model.config.model_type == model_type
    batch = processor(records[1:])
    ids, labels = model.fill_gen_codes(
        batch["input_ids"], batch["modality"], batch["labels"], batch.pop("gen_pixel_values")
    )
    batch.update(input_ids=ids, labels=labels)
    model.train()
    out = model(**batch)
    out.loss.backward()
    assert out.text_tokens > 0 and out.image_tokens > 0 and model.gen_head.vision_head.weight.grad.abs().sum() > 0
    model.eval()
    _check_generation(model, processor, "hello")


@pytest.mark.parametrize(
    "model_type, window",
    [
        ("mistral", dict(sliding_window=8)),  # every layer slides
        ("gemma2", dict(sliding_window=8)),  # sliding and full layers alternate
        ("gemma3_text", dict(sliding_window=8)),
        ("qwen2", dict(sliding_window=8, use_sliding_window=True, max_window_layers=1)),
    ],
)
def test_sliding_window_decoders_past_their_window(model_type, window):
    """Prompt and output far longer than the window: the engine's masks cut each sliding layer's
    view as transformers' own masks do, while its cache keeps every column."""
    model, processor = _family_model(model_type, **window)
    assert "sliding_attention" in (getattr(model.config.text_config, "layer_types", None) or ["sliding_attention"])
    _check_generation(model, processor, "hello there, a prompt much longer than the window")


def _check_generation(model, processor, question: str) -> None:
    """The engine's greedy text and CFG image codes equal argmaxes of cache-free forwards."""
    engine = GenerationEngine(model, processor)
    chat = processor.conversation([{"role": "user", "content": question}])
    text = engine.generate(
        [Request(chat)], GenerationSettings(temperature=0, max_new_tokens=6, ignore_eos=True, max_images=0)
    )[0].token_ids
    seq, mod = list(chat.ids), list(chat.modality)
    with torch.no_grad():
        for token in text:
            logits = model.text_logits(model(torch.tensor([seq]), torch.tensor([mod])).last_hidden_state[0, -1])
            logits[processor.image_start_id] = float("-inf")  # images are off in this call
            assert int(logits.argmax()) == token
            seq.append(token)
            mod.append(TEXT)

    cond = processor.generation_prompt("a red circle")
    uncond = processor.unconditional(cond)
    codes = engine.generate([Request(cond, "image")], GenerationSettings(temperature=0, cfg_scale=3.0))[0].codes[0]
    with torch.no_grad():
        for k, code in enumerate(codes.tolist()):
            c, u = (
                model.image_logits(
                    model(
                        torch.tensor([s.ids + codes[:k].tolist()]), torch.tensor([s.modality + [GEN_IMAGE] * k])
                    ).last_hidden_state[0, -1]
                )
                for s in (cond, uncond)
            )
            assert int((u + 3.0 * (c - u)).argmax()) == code


def test_from_parts_composes_a_qwen2_decoder(tmp_path):
    tokenizer = byte_level_tokenizer()
    config = AutoConfig.for_model(
        "qwen2",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        )
    ).save_pretrained(tmp_path / "siglip")
    model, processor = JanusLikeForConditionalGeneration.from_parts(
        tmp_path / "llm",
        tmp_path / "siglip",
        return_processor=True,
        gen_head_hidden_size=32,
        gen_image_size=16,
        vq_config=dict(
            base_channels=16,
            channel_multiplier=[1, 2],
            num_res_blocks=1,
            norm_num_groups=8,
            z_channels=16,
            codebook_size=32,
        ),
    )
    assert type(model.language_model).__name__ == "Qwen2ForCausalLM"
    model.save_pretrained(tmp_path / "composed")
    processor.save_pretrained(tmp_path / "composed")
    again = JanusLikeForConditionalGeneration.from_pretrained(tmp_path / "composed")
    batch = processor([{"task": "generation", "prompt": "a circle", "image": shape_image()}])
    pixels = batch.pop("gen_pixel_values")
    for m in (model, again):
        ids, labels = m.fill_gen_codes(batch["input_ids"], batch["modality"], batch["labels"], pixels)
        assert torch.isfinite(m(**dict(batch, input_ids=ids, labels=labels)).loss)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_other_attention_kinds_are_refused_with_a_clear_error():
    from types import SimpleNamespace

    from janus_like import SettingsError
    from janus_like.generation.engine import _attention_layout

    hybrid = SimpleNamespace(sliding_window=None, layer_types=["full_attention", "linear_attention"])
    with pytest.raises(SettingsError, match="linear_attention layers; the generation engine supports full and"):
        _attention_layout(hybrid)
    assert _attention_layout(SimpleNamespace(sliding_window=8, layer_types=["full_attention"] * 2)) == (None, None)


@pytest.mark.slow
def test_compiled_step_with_per_layer_type_masks_equals_eager():
    model, processor = _family_model("gemma2", sliding_window=8)
    prompt = processor.generation_prompt("a red circle on the left, a prompt longer than the window")
    draw = GenerationSettings(temperature=0, cfg_scale=3.0)
    compiled = GenerationEngine(model, processor, compile=True)
    eager = GenerationEngine(model, processor)
    for a, b in zip(
        eager.generate([Request(prompt, "image")] * 2, draw), compiled.generate([Request(prompt, "image")] * 2, draw)
    ):
        assert torch.equal(a.codes[0], b.codes[0])
    chat = processor.conversation([{"role": "user", "content": "hello there, a question longer than the window"}])
    text = GenerationSettings(temperature=0, max_new_tokens=12, ignore_eos=True)
    assert compiled.generate([Request(chat)], text)[0].token_ids == eager.generate([Request(chat)], text)[0].token_ids
