"""Saving, loading, composing from parts, and the VQ tokenizer at Janus sizes."""

import shutil

import pytest
import torch
from transformers import (
    BertConfig,
    BertLMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from janus_like import (
    CheckpointError,
    JanusLikeConfig,
    JanusLikeForConditionalGeneration,
    JanusLikeProcessor,
    JanusLikeVQConfig,
    JanusLikeVQModel,
    SettingsError,
)
from janus_like.layout import UND_IMAGE
from janus_like.testing import BOS, EOS, shape_image


def test_save_load_reproduces_outputs_bit_for_bit(tiny, records, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = JanusLikeForConditionalGeneration.from_pretrained(tmp_path).eval()
    loaded_processor = JanusLikeProcessor.from_pretrained(tmp_path)
    batch = processor(records)
    assert all(torch.equal(batch[k], v) for k, v in loaded_processor(records).items())
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.loss, b.loss)
    pixels = processor.generation_pixels(shape_image())[None]
    assert torch.equal(model.vq.encode(pixels), loaded.vq.encode(pixels))


def test_vq_at_janus_sizes_has_janus_parameter_count():
    with torch.device("meta"):
        vq = JanusLikeVQModel(JanusLikeVQConfig())
    count = lambda m: sum(p.numel() for p in m.parameters())
    total = count(vq.encoder) + count(vq.decoder) + count(vq.quant_conv) + count(vq.post_quant_conv)
    assert round(total / 1e6, 2) == 71.75  # Janus / LlamaGen VQ-16: 71.75M
    assert tuple(vq.codebook.shape) == (16384, 8)
    assert tuple(vq.encoder.down_blocks[4].attentions[0].to_q.weight.shape) == (512, 512)


def test_vq_encode_decode_and_training_forward():
    cfg = JanusLikeVQConfig(
        base_channels=16,
        channel_multiplier=[1, 2],
        num_res_blocks=1,
        norm_num_groups=8,
        z_channels=16,
        codebook_size=32,
        codebook_dim=4,
    )
    vq = JanusLikeVQModel(cfg)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = vq.encode(pixels)
    assert ids.shape == (2, 64) and ids.max() < 32
    assert vq.decode(ids).shape == (2, 3, 16, 16)
    # encode is the nearest unit-norm code: decoding the code's vector and re-quantising is stable
    codes = vq.quantize.get_codes_from_indices(ids.view(2, 8, 8))
    sim = torch.nn.functional.normalize(codes, dim=1).flatten(2).transpose(1, 2) @ vq.codebook.t()
    assert torch.equal(sim.argmax(-1), ids)
    vq.train()
    out = vq(pixels)
    out["loss"].backward()
    assert out["recon_loss"] > 0 and 0 < out["codebook_usage"] <= 1
    assert vq.encoder.conv_in.weight.grad is not None


def test_from_parts_composes_a_working_model(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    raw = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS)
    tokenizer.add_tokens([BOS, EOS], special_tokens=True)
    llm = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=len(tokenizer)
        )
    )
    llm.save_pretrained(tmp_path / "llm")
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
    JanusLikeVQModel(
        JanusLikeVQConfig(
            base_channels=16,
            channel_multiplier=[1, 2],
            num_res_blocks=1,
            norm_num_groups=8,
            z_channels=16,
            codebook_size=32,
        )
    ).save_pretrained(tmp_path / "vq")

    model, processor = JanusLikeForConditionalGeneration.from_parts(
        llm=tmp_path / "llm",
        vision=tmp_path / "siglip",
        vq=tmp_path / "vq",
        return_processor=True,
        gen_head_hidden_size=32,
        gen_image_size=16,
    )
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) > len(tokenizer)
    # the parts keep the attention they were loaded with: composing the config had set it to None, which
    # transformers runs unmasked, every token seeing the later ones (and training learned to copy them)
    attention = (model.language_model.config._attn_implementation, model.vision_model.config._attn_implementation)
    assert attention == ("sdpa", "sdpa")
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]])).last_hidden_state
    assert torch.equal(hidden[0, :3], hidden[1, :3])
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image_placeholder>")
    # the LLM's own weights were kept
    assert torch.equal(model.language_model.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    record = {
        "task": "understanding",
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": shape_image()}, {"type": "text", "text": "hi?"}]},
            {"role": "assistant", "content": "a circle"},
        ],
    }
    batch = processor([record, {"task": "generation", "prompt": "a circle", "image": shape_image()}])
    assert (batch["modality"] == UND_IMAGE).sum() == 4
    model.train()
    out = model(**batch)
    out.loss.backward()
    assert out.text_tokens > 0 and out.image_tokens == 64

    model.save_pretrained(tmp_path / "composed")
    processor.save_pretrained(tmp_path / "composed")
    again = JanusLikeForConditionalGeneration.from_pretrained(tmp_path / "composed")
    assert isinstance(again.config, JanusLikeConfig)
    assert again.config.image_token_id == model.config.image_token_id

    # a folder of another kind is refused, not built with fresh weights (transformers only logs it)
    parts = dict(llm=tmp_path / "llm", vision=tmp_path / "siglip", vq=tmp_path / "vq")
    for name, wrong, words in [
        ("vq", "llm", "is not a janus_like VQ tokenizer"),
        ("vision", "llm", "is not a SigLIP vision encoder"),
        ("vq", "nowhere", "no such folder"),
        ("llm", "siglip", "no tokenizer"),
    ]:
        with pytest.raises(CheckpointError, match=words):
            JanusLikeForConditionalGeneration.from_parts(**{**parts, name: tmp_path / wrong})
    with pytest.raises(SettingsError, match="gen_image_sise"):  # a config would take it silently
        JanusLikeForConditionalGeneration.from_parts(**parts, gen_image_sise=16)
    for setting, words in [
        (dict(gen_image_size=0), "gen_image_size = 0 is not accepted; it must be an integer >= 1"),
        (dict(gen_image_size=16.5), "gen_image_size = 16.5"),
        (dict(gen_head_hidden_size="big"), "gen_head_hidden_size = 'big'"),
        (dict(default_cfg_scale=-1), "default_cfg_scale = -1"),
        (dict(default_cfg_plausibility=2), "default_cfg_plausibility = 2 is not accepted; it must be a number from 0"),
        (dict(user_role=5), "user_role = 5 is not accepted; it must be a string"),
        (dict(gen_image_size=17), "gen_image_size = 17 is not a multiple of 2"),
        (dict(gen_image_size=128), "gives 4096 codes an image .* more than the LM.s context of 2048"),
    ]:
        with pytest.raises(SettingsError, match=words):
            JanusLikeForConditionalGeneration.from_parts(**parts, **setting)
    # a reshaped tensor: transformers points at its LOAD REPORT table; the error carries its rows instead
    from safetensors.torch import load_file, save_file

    shutil.copytree(tmp_path / "llm", tmp_path / "reshaped")
    state = load_file(tmp_path / "reshaped" / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(72, 32)
    save_file(state, tmp_path / "reshaped" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"the tensors: model.layers.0.mlp.up_proj.weight MISMATCH .*\[72, 32\]"):
        JanusLikeForConditionalGeneration.from_parts(**{**parts, "llm": tmp_path / "reshaped"}, gen_image_size=16)
    # an encoder LM loads as "a causal LM" (BertLMHeadModel) but attends both ways: refused
    BertLMHeadModel(
        BertConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=len(tokenizer)
        )
    ).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="BertLMHeadModel lets a token see the tokens after it"):
        JanusLikeForConditionalGeneration.from_parts(**{**parts, "llm": tmp_path / "bert"}, gen_image_size=16)
