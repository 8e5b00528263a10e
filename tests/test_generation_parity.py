"""Greedy parity with transformers' Janus on identical weights (text mode and image mode)."""

import pytest
import torch
from hf_reference import hf_generate_images, hf_to_janus_like, random_hf_janus

from janus_like.generation import GenerationEngine, GenerationSettings, Request
from janus_like.testing import tiny_model


@pytest.fixture(scope="module")
def pair():
    _, processor = tiny_model()
    hf = random_hf_janus(processor.config, seed=0, std=0.2)
    return hf, hf_to_janus_like(hf, processor.config), processor


@pytest.mark.parametrize("cfg_scale", [5.0, 1.5])
def test_greedy_image_codes_equal_transformers_janus(pair, cfg_scale):
    hf, model, processor = pair
    prompt = processor.generation_prompt("a red circle on the left")
    reference = hf_generate_images(hf, torch.tensor([prompt.ids]), processor, 1, cfg_scale, do_sample=False)
    ours = GenerationEngine(model, processor).generate(
        [Request(prompt, "image")] * 2, GenerationSettings(temperature=0, cfg_scale=cfg_scale)
    )
    assert len(set(reference[0].tolist())) > 3  # not a degenerate constant image
    for result in ours:
        assert torch.equal(result.codes[0], reference[0])


def test_greedy_text_equals_transformers_janus(pair):
    hf, model, processor = pair
    prompt = processor.conversation([{"role": "user", "content": "Describe a red circle."}])
    ids = torch.tensor([prompt.ids])
    reference = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=24,
        do_sample=False,
        pad_token_id=processor.pad_id,
        eos_token_id=processor.eos_id,
    )[0, len(prompt) :].tolist()
    ours = GenerationEngine(model, processor).generate(
        [Request(prompt)], GenerationSettings(temperature=0, max_new_tokens=24)
    )[0]
    assert ours.token_ids == reference[: len(ours.token_ids)]
    assert len(ours.token_ids) == 24 or ours.token_ids[-1] == processor.eos_id


def test_decoded_pixels_equal_transformers_janus(pair):
    hf, model, processor = pair
    codes = torch.randint(0, model.config.vq_config.codebook_size, (2, processor.num_gen_tokens))
    with torch.no_grad():
        ours = model.vq.decode(codes)
        reference = hf.decode_image_tokens(codes).permute(0, 3, 1, 2)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4)


def test_the_benchmarks_sampling_reference_filters_like_ours(pair, monkeypatch):
    """benchmarks/generate.py times transformers' sampling against ours: both sample from every code
    (GenerationConfig's default top_k=50 would make the reference draw from another distribution)."""
    hf, _, processor = pair
    used = []
    build = type(hf)._get_logits_processor

    def recording(self, *args, **kwargs):
        processors = build(self, *args, **kwargs)
        used.extend(type(p).__name__ for p in processors)
        return processors

    monkeypatch.setattr(type(hf), "_get_logits_processor", recording)
    prompt = processor.generation_prompt("a red circle")
    hf_generate_images(hf, torch.tensor([prompt.ids]), processor, 2, 5.0, do_sample=True)
    assert used == ["ClassifierFreeGuidanceLogitsProcessor"]
