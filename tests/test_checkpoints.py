"""Foreign checkpoints (docs/ARCHITECTURE.md §5): DeepSeek's Janus layout and transformers' Janus layout load
unchanged and give the reference outputs; convert; loading options; errors; a real-size dry run.

DeepSeek's reference is tests/reference_janus.py (their modules, their key names); transformers'
is its own JanusForConditionalGeneration. Everything is tiny, random and built here.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import reference_janus as ref
import torch
from safetensors.torch import save_file
from transformers.utils import is_flash_attn_2_available

from janus_like import CheckpointError, JanusLikeForConditionalGeneration, JanusLikeProcessor, SettingsError
from janus_like.checkpoint import deepseek, default_model_path, detect_layout, hf_janus
from janus_like.cli import main as cli_main
from janus_like.convert import convert
from janus_like.layout import GEN_IMAGE, TEXT
from janus_like.testing import BOS, EOS, PAD, byte_level_tokenizer, random_image, shape_image, tiny_model

H = 64  # language model width
TINY_SIGLIP = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2)
TINY_VQ = dict(
    base_channels=32,
    channel_multiplier=[1, 1, 2],
    num_res_blocks=1,
    z_channels=32,
    codebook_size=64,
    codebook_dim=8,
    image_size=16,
)
TINY_VQ_REF = dict(ch=32, ch_mult=[1, 1, 2], z_channels=32, num_res_blocks=1, codebook_size=64, codebook_embed_dim=8)
ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def tiny_tables():
    """Tiny SigLIP / VQ entries in the by-name model tables (as DeepSeek's code would need too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(deepseek.SIGLIP_VARIANTS, "siglip_tiny_patch8_32", TINY_SIGLIP)
        mp.setitem(deepseek.VQ_VARIANTS, "VQ-tiny", TINY_VQ)
        mp.setitem(ref.SIGLIP_TABLE, "siglip_tiny_patch8_32", TINY_SIGLIP)
        mp.setitem(ref.VQ_TABLE, "VQ-tiny", TINY_VQ_REF)
        yield


def deepseek_config(vocab_size: int) -> dict:
    """DeepSeek's config.json fields (Janus-Pro-7B's file, shrunk)."""
    return {
        "aligner_config": {
            "cls": "MlpProjector",
            "model_type": "aligner",
            "params": {"depth": 2, "input_dim": 32, "n_embed": H, "projector_type": "mlp_gelu"},
        },
        "gen_aligner_config": {
            "cls": "MlpProjector",
            "model_type": "gen_aligner",
            "params": {"depth": 2, "input_dim": 8, "n_embed": H, "projector_type": "mlp_gelu"},
        },
        "gen_head_config": {
            "cls": "vision_head",
            "model_type": "gen_head",
            "params": {"image_token_embed": H, "image_token_size": 64, "n_embed": H},
        },
        "gen_vision_config": {
            "cls": "VQ-tiny",
            "model_type": "gen_vision",
            "params": {"image_token_size": 64, "n_embed": 8},
        },
        "language_config": {
            "hidden_size": H,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 512,
            "model_type": "llama",
            "torch_dtype": "bfloat16",
            "vocab_size": vocab_size,
        },
        "model_type": "multi_modality",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1",
        "vision_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision",
            "params": {
                "image_size": 32,
                "model_name": "siglip_tiny_patch8_32",
                "select_feature": "same",
                "select_layer": -1,
            },
        },
    }


def write_deepseek_tokenizer(path: Path, pro: bool = True) -> None:
    """Tokenizer files as DeepSeek ships them: byte-level BPE; Pro has <image_placeholder> and the
    <|User|>/<|Assistant|> role tokens, Janus-1.3B neither (its VLChatProcessor adds the placeholder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [BOS, EOS, PAD, "<begin_of_image>", "<end_of_image>"]
        + (["<image_placeholder>", "<|User|>", "<|Assistant|>"] if pro else [])
    )
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": BOS,
                "clean_up_tokenization_spaces": False,
                "eos_token": EOS,
                "model_max_length": 16384,
                "pad_token": None,
                "tokenizer_class": "LlamaTokenizer",
                "unk_token": None,
                "use_default_system_prompt": True,
            }
        )
    )
    special = (
        [
            "<image_placeholder>",
            "<patch_placeholder>",
            "<|ref|>",
            "<|/ref|>",
            "<|det|>",
            "<|/det|>",
            "<|grounding|>",
            "<|User|>",
            "<|Assistant|>",
        ]
        if pro
        else []
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": special, "bos_token": BOS, "eos_token": EOS, "pad_token": PAD})
    )
    (path / "processor_config.json").write_text(
        json.dumps(
            {
                "add_special_token": False,
                "ignore_id": -100,
                "image_tag": "<image_placeholder>",
                "mask_prompt": True,
                "num_image_tokens": 16,
                "processor_class": "VLChatProcessor",
                "sft_format": "deepseek",
            }
        )
    )
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "background_color": [127, 127, 127],
                "do_normalize": pro,
                "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "VLMImageProcessor",
                "image_size": 32,
                "image_std": [0.5, 0.5, 0.5],
                "min_size": 14,
                "processor_class": "VLChatProcessor",
                "rescale_factor": 0.00392156862745098,
            }
        )
    )


def write_deepseek(path: Path, weights: str = "bin", pro: bool = True, seed: int = 0) -> ref.MultiModalityCausalLM:
    """A DeepSeek-layout directory with random weights; returns the reference model holding them."""
    write_deepseek_tokenizer(path, pro)
    vocab_size = 300  # the embedding has more rows than the tokenizer has tokens, as in Janus (102400)
    config = deepseek_config(vocab_size)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = ref.MultiModalityCausalLM(config).eval()
    with torch.no_grad():  # make norms and biases non-trivial so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    state = model.state_dict()
    if weights == "bin":
        torch.save(state, path / "pytorch_model.bin")
    else:  # two shards with an index, like Janus-Pro-7B
        write_shards(path, state, "bin" if weights == "bin-sharded" else "safetensors")
    return model


@pytest.fixture(scope="module")
def deepseek_dir(tmp_path_factory, tiny_tables):
    path = tmp_path_factory.mktemp("deepseek") / "Janus-Pro-tiny"
    return path, write_deepseek(path)


def raw_tokenizer(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json"))


def understanding_batch(processor, question: str, image):
    seq = processor.conversation(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    )
    return seq, processor.collate([seq])


@torch.no_grad()
def our_greedy_text(model, batch, steps: int) -> list[int]:
    """A few greedy steps through our model by recomputation (the generation engine is tested elsewhere)."""
    ids, modality, pixels = batch["input_ids"], batch["modality"], batch["pixel_values"]
    out = []
    for _ in range(steps):
        hidden = model(input_ids=ids, modality=modality, pixel_values=pixels).last_hidden_state
        nxt = model.text_logits(hidden[:, -1]).argmax(-1)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt[:, None]], 1)
        modality = torch.cat([modality, torch.full_like(nxt[:, None], TEXT)], 1)
    return out


@torch.no_grad()
def our_greedy_codes(model, processor, prompt: str, cfg: float, steps: int) -> list[int]:
    """Janus CFG image decoding through our model: conditional row and the padded unconditional twin."""
    cond = processor.generation_prompt(prompt)
    uncond = processor.unconditional(cond)
    ids = torch.tensor([cond.ids, uncond.ids])
    modality = torch.full_like(ids, TEXT)
    codes = []
    for _ in range(steps):
        hidden = model(input_ids=ids, modality=modality).last_hidden_state[:, -1]
        logits = model.image_logits(hidden)
        nxt = (logits[1] + cfg * (logits[0] - logits[1])).argmax()
        codes.append(int(nxt))
        ids = torch.cat([ids, nxt.repeat(2, 1)], 1)
        modality = torch.cat([modality, torch.full((2, 1), GEN_IMAGE)], 1)
    return codes


# --------------------------------------------------------------------------- DeepSeek layout


def test_deepseek_layout_matches_reference(deepseek_dir):
    path, reference = deepseek_dir
    assert detect_layout(path) == "deepseek"
    model = JanusLikeForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    processor = JanusLikeProcessor.from_pretrained(path)
    tokenizer = raw_tokenizer(path)
    vocab = tokenizer.get_vocab()
    ids = {
        "bos": vocab[BOS],
        "image": vocab["<image_placeholder>"],
        "start": vocab["<begin_of_image>"],
        "end": vocab["<end_of_image>"],
    }
    assert processor.config.user_role == "<|User|>" and processor.pad_id == vocab[PAD]

    # prompts: DeepSeek's understanding prompt (system prompt, placeholder + newline) token for token
    image = random_image(40, seed=1).resize((40, 27))
    seq, batch = understanding_batch(processor, "Describe it.", image)
    prompt = ref.sft_prompt(
        [
            {"role": "<|User|>", "content": "<image_placeholder>\nDescribe it."},
            {"role": "<|Assistant|>", "content": ""},
        ],
        ref.SYSTEM_PROMPT,
    )
    assert prompt.endswith("\n\n<|User|>: <image_placeholder>\nDescribe it.\n\n<|Assistant|>:")
    ref_ids = ref.process_one(tokenizer, prompt, ids, 16)
    assert seq.ids == ref_ids
    # DeepSeek strips each message: whitespace around a question (a text box's newline) changes nothing
    assert understanding_batch(processor, "Describe it. \n", image)[0].ids == ref_ids

    # understanding logits
    pixels = batch["pixel_values"]
    input_ids = torch.tensor([ref_ids])
    with torch.no_grad():
        embeds = reference.prepare_inputs_embeds(
            input_ids, pixels[None], input_ids == ids["image"], torch.ones(1, 1, 16, dtype=torch.bool)
        )
        ref_hidden = reference.language_model.model(inputs_embeds=embeds).last_hidden_state
        ref_logits = reference.language_model.lm_head(ref_hidden)
        out = model(**{k: batch[k] for k in ("input_ids", "modality", "pixel_values", "attention_mask")})
        logits = model.text_logits(out.last_hidden_state)
    assert (logits - ref_logits).abs().max() <= ATOL
    # gen head logits on the same hidden states
    with torch.no_grad():
        assert (model.image_logits(out.last_hidden_state) - reference.gen_head(ref_hidden)).abs().max() <= ATOL

    # VQ: encode ids and decoded pixels
    gen_pixels = torch.stack([processor.generation_pixels(im) for im in (shape_image(), random_image(16))])
    with torch.no_grad():
        ref_codes = reference.gen_vision_model.encode_ids(gen_pixels)
        codes = model.vq.encode(gen_pixels)
        assert torch.equal(codes, ref_codes)
        decoded = model.vq.decode(codes)
        ref_decoded = reference.gen_vision_model.decode_code(codes.flatten(), [2, 8, 4, 4])
    assert (decoded - ref_decoded).abs().max() <= ATOL

    # greedy text: their language_model.generate(inputs_embeds) vs our model step by step
    ref_text = ref.greedy_text(reference, embeds, steps=5, eos_id=vocab[EOS])
    assert our_greedy_text(model, batch, steps=len(ref_text)) == ref_text

    # greedy image codes with CFG: their generation_inference loop vs ours
    gen_prompt = (
        ref.sft_prompt([{"role": "<|User|>", "content": "a red circle"}, {"role": "<|Assistant|>", "content": ""}], "")
        + "<begin_of_image>"
    )
    assert gen_prompt == "<|User|>: a red circle\n\n<|Assistant|>:<begin_of_image>"
    gen_ids = [ids["bos"]] + tokenizer.encode(gen_prompt, add_special_tokens=False).ids
    assert processor.generation_prompt("a red circle").ids == gen_ids
    stray = (
        ref.sft_prompt(
            [{"role": "<|User|>", "content": "\n a red circle  "}, {"role": "<|Assistant|>", "content": ""}], ""
        )
        + "<begin_of_image>"
    )
    assert (
        processor.generation_prompt("\n a red circle  ").ids
        == [ids["bos"]] + tokenizer.encode(stray, add_special_tokens=False).ids
        == gen_ids
    )
    ref_img = ref.greedy_image_codes(reference, gen_ids, vocab[PAD], cfg_weight=5.0, steps=16)
    assert our_greedy_codes(model, processor, "a red circle", 5.0, 16) == ref_img.tolist()


MESSAGE_LAYOUTS = [  # content items -> the user turn transformers' Janus chat template writes ([img]: one image span)
    pytest.param(["img", "What is this?"], "[img]\nWhat is this?", id="image-text"),  # DeepSeek's own form
    pytest.param(["What is this?", "img"], "What is this?\n[img]", id="text-image"),
    pytest.param(["img", "img", "Compare."], "[img]\n\n[img]\nCompare.", id="image-image-text"),
    pytest.param(["  a red", "circle \n"], "a red circle", id="texts-stripped-and-joined"),
    pytest.param(["img"], "[img]", id="image-only"),
]


@pytest.mark.parametrize("items, turn", MESSAGE_LAYOUTS)
def test_message_content_is_laid_out_like_the_janus_chat_template(deepseek_dir, items, turn):
    processor = JanusLikeProcessor.from_pretrained(deepseek_dir[0])
    content = [
        {"type": "image", "image": shape_image()} if item == "img" else {"type": "text", "text": item} for item in items
    ]
    for role, written in (
        ("user", f"<|User|>: {turn}\n\n<|Assistant|>:"),
        ("assistant", f"<|User|>: hi\n\n<|Assistant|>: {turn}<eos>"),
    ):
        messages = [{"role": "user", "content": "hi"}] * (role == "assistant") + [{"role": role, "content": content}]
        seq = processor.conversation(messages, system_prompt="", add_generation_prompt=role == "user")
        text = processor.decode(seq.ids, skip_special_tokens=False).replace(EOS, "<eos>").removeprefix(BOS)
        span = "<begin_of_image>" + "<image_placeholder>" * processor.num_image_tokens + "<end_of_image>"
        assert text.replace(span, "[img]") == written


@pytest.mark.parametrize("weights", ["bin-sharded", "safetensors"])
def test_deepseek_shard_layouts_load_the_same(tmp_path, deepseek_dir, weights):
    path, reference = deepseek_dir
    other = tmp_path / "ckpt"
    write_deepseek(other, weights=weights, seed=0)
    a = JanusLikeForConditionalGeneration.from_pretrained(path).state_dict()
    b = JanusLikeForConditionalGeneration.from_pretrained(other).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def write_shards(path: Path, state: dict, fmt: str = "bin") -> None:
    keys = list(state)
    name = "pytorch_model-{:05d}-of-00002.bin" if fmt == "bin" else "model-{:05d}-of-00002.safetensors"
    files = {name.format(i + 1): keys[i::2] for i in range(2)}
    for file, part in files.items():
        shard = {k: state[k].contiguous() for k in part}
        if fmt == "bin":
            torch.save(shard, path / file)
        else:
            save_file(shard, path / file, metadata={"format": "pt"})
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (path / index).write_text(json.dumps({"metadata": {}, "weight_map": {k: f for f, ks in files.items() for k in ks}}))


def test_janus_13b_style_checkpoint_plain_roles_added_placeholder_no_normalize(tmp_path):
    path = tmp_path / "Janus-1.3B"  # the release is told by its name (tests/test_deepseek_roles.py)
    reference = write_deepseek(path, pro=False)
    processor = JanusLikeProcessor.from_pretrained(path)
    tokenizer = raw_tokenizer(path)
    assert "<image_placeholder>" not in tokenizer.get_vocab()
    assert (processor.config.user_role, processor.config.assistant_role) == ("User", "Assistant")
    assert processor.image_token_id == len(tokenizer.get_vocab())  # appended, as VLChatProcessor does
    seq, batch = understanding_batch(processor, "Convert", shape_image())
    prompt = ref.sft_prompt(
        [{"role": "User", "content": "<image_placeholder>\nConvert"}, {"role": "Assistant", "content": ""}],
        ref.SYSTEM_PROMPT,
    )
    assert prompt.endswith("language.\n\nUser: <image_placeholder>\nConvert\n\nAssistant:")
    vocab = processor.tokenizer.get_vocab()
    ids = {
        "bos": vocab[BOS],
        "image": processor.image_token_id,
        "start": vocab["<begin_of_image>"],
        "end": vocab["<end_of_image>"],
    }
    tokenizer.add_special_tokens(["<image_placeholder>"])
    assert tokenizer.token_to_id("<image_placeholder>") == processor.image_token_id
    assert seq.ids == ref.process_one(tokenizer, prompt, ids, 16)
    # do_normalize=false: pixels stay in [0, 1], padding is still the mean grey
    assert processor.do_normalize is False and 0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1
    model = JanusLikeForConditionalGeneration.from_pretrained(path)
    with torch.no_grad():
        input_ids = batch["input_ids"]
        embeds = reference.prepare_inputs_embeds(
            input_ids, batch["pixel_values"][None], input_ids == ids["image"], torch.ones(1, 1, 16, dtype=torch.bool)
        )
        ref_hidden = reference.language_model.model(inputs_embeds=embeds).last_hidden_state
        hidden = model(**{k: batch[k] for k in ("input_ids", "modality", "pixel_values")}).last_hidden_state
    assert (hidden - ref_hidden).abs().max() <= ATOL


# --------------------------------------------------------------------------- transformers' layout


def write_hf_janus(path: Path, tie: bool):
    """transformers' JanusForConditionalGeneration + JanusProcessor, saved with save_pretrained."""
    from tokenizers.processors import TemplateProcessing
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessor,
        JanusProcessor,
        PreTrainedTokenizerFast,
    )

    tok_dir = path.parent / f"{path.name}-tok"
    base = byte_level_tokenizer()  # prepends BOS like DeepSeek's Llama tokenizer
    base.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, base.bos_token_id)]
    )
    base.save_pretrained(tok_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(
        tok_dir,
        extra_special_tokens={
            "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    config = JanusConfig(
        text_config=dict(
            model_type="llama",
            hidden_size=H,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=300,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            mlp_ratio=2.0,
            projection_dim=H,
            num_image_tokens=16,
        ),
        vq_config=dict(
            base_channels=32,
            channel_multiplier=[1, 1, 2],
            num_res_blocks=1,
            latent_channels=32,
            embed_dim=8,
            num_embeddings=64,
            projection_dim=H,
            image_token_embed_dim=H,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    image_processor = JanusImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3, size={"height": 32, "width": 32})
    processor = JanusProcessor(
        image_processor=image_processor, tokenizer=tokenizer, use_default_system_prompt=True, num_image_tokens=16
    )
    processor.save_pretrained(path)
    shutil.rmtree(tok_dir)
    return model, processor


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_layout_matches_transformers(tmp_path, tie):
    hf_model, hf_processor = write_hf_janus(tmp_path / "hf", tie)
    if tie:  # transformers saved embed_tokens once; lm_head is rebuilt from it
        assert torch.equal(hf_model.lm_head.weight, hf_model.model.language_model.embed_tokens.weight)
    assert detect_layout(tmp_path / "hf") == "hf_janus"
    model = JanusLikeForConditionalGeneration.from_pretrained(tmp_path / "hf")
    processor = JanusLikeProcessor.from_pretrained(tmp_path / "hf")

    image = random_image(32, seed=3)  # square: transformers rounds resized sides where DeepSeek truncates
    seq, batch = understanding_batch(processor, "What is this?", image)
    hf_inputs = hf_processor(
        text="<|User|>: <image_placeholder>\nWhat is this?\n\n<|Assistant|>:", images=[image], return_tensors="pt"
    )
    assert seq.ids == hf_inputs["input_ids"][0].tolist()
    assert torch.allclose(batch["pixel_values"], hf_inputs["pixel_values"].float(), atol=1e-6)
    input_ids = batch["input_ids"]
    with torch.no_grad():
        hf_out = hf_model(input_ids=input_ids, pixel_values=batch["pixel_values"])
        out = model(**{k: batch[k] for k in ("input_ids", "modality", "pixel_values")})
        assert (model.text_logits(out.last_hidden_state) - hf_out.logits).abs().max() <= ATOL
        hf_hidden = hf_model.model(input_ids=input_ids, pixel_values=batch["pixel_values"]).last_hidden_state
        hf_image_logits = hf_model.model.generation_head(hf_hidden)
        assert (model.image_logits(out.last_hidden_state) - hf_image_logits).abs().max() <= ATOL

        # VQ: we match DeepSeek (l2-normalised latents and codes); transformers' encode compares raw
        # latents with the raw codebook, so its ids can differ — decode is the same in both.
        gen_pixels = torch.stack([processor.generation_pixels(im) for im in (shape_image(), random_image(16))])
        vq = hf_model.model.vqmodel
        latents = vq.quant_conv(vq.encoder(gen_pixels))
        normed = torch.nn.functional.normalize(latents, dim=1).flatten(2).transpose(1, 2)
        deepseek_ids = (normed @ torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1).t()).argmax(-1)
        codes = model.vq.encode(gen_pixels)
        assert torch.equal(codes, deepseek_ids)
        assert (model.vq.decode(codes) - vq.decode(codes)).abs().max() <= ATOL

    # greedy text: transformers' generate vs our model step by step
    hf_text = hf_model.generate(
        input_ids=input_ids,
        pixel_values=batch["pixel_values"],
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=processor.pad_id,
    )[0, input_ids.shape[1] :].tolist()
    assert hf_text and our_greedy_text(model, batch, steps=len(hf_text)) == hf_text

    # greedy image codes with CFG 5: transformers' image-mode generate vs ours
    prompt = processor.generation_prompt("a red circle")
    hf_model.generation_config.pad_token_id = processor.pad_id
    hf_model.generation_config.bos_token_id = processor.bos_id
    hf_model.generation_config.generation_kwargs = {"boi_token_id": processor.image_start_id}
    hf_codes = hf_model.generate(
        input_ids=torch.tensor([prompt.ids]),
        attention_mask=torch.ones(1, len(prompt)),
        generation_mode="image",
        do_sample=False,
        guidance_scale=5.0,
    )
    assert our_greedy_codes(model, processor, "a red circle", 5.0, 16) == hf_codes[0].tolist()


# --------------------------------------------------------------------------- convert, options


def outputs(model, processor, device="cpu"):
    """Text logits, image logits and decoded pixels for one understanding prompt, on the CPU."""
    _, batch = understanding_batch(processor, "Describe it.", shape_image())
    with torch.no_grad():
        inputs = {k: batch[k].to(device) for k in ("input_ids", "modality", "pixel_values")}
        hidden = model(**inputs).last_hidden_state
        results = (
            model.text_logits(hidden),
            model.image_logits(hidden),
            model.vq.decode(torch.arange(32, device=device).view(2, 16)),
        )
    return [r.float().cpu() for r in results]


def test_convert_deepseek_and_transformers_to_own_format(tmp_path, deepseek_dir, umask):
    path, _ = deepseek_dir
    hf_dir = tmp_path / "hf"
    write_hf_janus(hf_dir, tie=True)
    for src, dst in ((path, tmp_path / "ds-own"), (hf_dir, tmp_path / "hf-own")):
        direct = JanusLikeForConditionalGeneration.from_pretrained(src)
        if src == path:  # small shards: several files and an index
            convert(src, dst, max_shard_bytes=200_000)
            assert (dst / "model.safetensors.index.json").is_file() and len(list(dst.glob("model-*.safetensors"))) > 2
        else:
            assert cli_main(["convert", str(src), str(dst)]) == 0
        assert detect_layout(dst) == "janus_like" and not list(tmp_path.glob(".*"))  # no temp dirs left
        # others may read a converted model as they may any file this process makes
        assert {p.stat().st_mode & 0o777 for p in (dst, *dst.iterdir())} == {0o777 & ~umask} | {
            0o666 & ~umask for p in dst.iterdir() if p.is_file()
        }
        converted = JanusLikeForConditionalGeneration.from_pretrained(dst)
        processor = JanusLikeProcessor.from_pretrained(dst)
        assert processor.config.user_role == "<|User|>" and converted.config.image_start_token_id is not None
        for a, b in zip(outputs(direct, JanusLikeProcessor.from_pretrained(src)), outputs(converted, processor)):
            assert torch.equal(a, b)
    assert cli_main(["convert", str(path), str(tmp_path / "ds-own")]) == 2  # destination not empty


def test_loading_options_dtype_low_mem_and_device_map(tmp_path, deepseek_dir):
    path, _ = deepseek_dir
    processor = JanusLikeProcessor.from_pretrained(path)
    base = outputs(JanusLikeForConditionalGeneration.from_pretrained(path), processor)
    eager = JanusLikeForConditionalGeneration.from_pretrained(path, low_cpu_mem_usage=False, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(base, outputs(eager, processor)))
    half = JanusLikeForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    auto = JanusLikeForConditionalGeneration.from_pretrained(path, device_map="auto")
    assert all(torch.equal(a, b) for a, b in zip(base, outputs(auto, processor)))
    # parts offloaded to disk; accelerate's hooks bring them back for the forward
    device_map = {
        "language_model": "cpu",
        "vision_model": "disk",
        "aligner": "cpu",
        "vq": "disk",
        "gen_embed": "cpu",
        "gen_aligner": "disk",
        "gen_head": "cpu",
    }
    with pytest.raises(CheckpointError, match="offload_folder"):
        JanusLikeForConditionalGeneration.from_pretrained(path, device_map=device_map)
    offloaded = JanusLikeForConditionalGeneration.from_pretrained(
        path, device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    assert (tmp_path / "offload" / "index.json").is_file()
    assert all((a - b).abs().max() <= ATOL for a, b in zip(base, outputs(offloaded, processor)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_device_and_device_map_with_cpu_offload(deepseek_dir, monkeypatch):
    path, _ = deepseek_dir
    processor = JanusLikeProcessor.from_pretrained(path)
    base = outputs(JanusLikeForConditionalGeneration.from_pretrained(path), processor)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, comparable with the CPU

    def close(got):
        diffs = [float((a - b).abs().max()) for a, b in zip(base, got)]
        assert max(diffs) <= 1e-3, diffs
        return True

    on_gpu = JanusLikeForConditionalGeneration.from_pretrained(path, device="cuda")
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"} and close(outputs(on_gpu, processor, "cuda"))
    # decoder on the GPU, the encoders offloaded to CPU RAM and streamed in by accelerate's hooks
    split = {
        "language_model": 0,
        "vision_model": "cpu",
        "aligner": 0,
        "vq": "cpu",
        "gen_embed": 0,
        "gen_aligner": 0,
        "gen_head": 0,
    }
    offloaded = JanusLikeForConditionalGeneration.from_pretrained(path, device_map=split)
    assert offloaded.language_model.model.embed_tokens.weight.device.type == "cuda"
    assert close(outputs(offloaded, processor, "cuda"))
    auto = JanusLikeForConditionalGeneration.from_pretrained(path, device_map="auto", dtype=torch.bfloat16)
    assert set(auto.hf_device_map.values()) == {0}
    assert all((a - b).abs().max() <= 0.1 for a, b in zip(base, outputs(auto, processor, "cuda")))


# --------------------------------------------------------------------------- errors, safety


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bin_is_read_with_weights_only_and_code_is_refused(tmp_path, deepseek_dir):
    path = copy_checkpoint(deepseek_dir[0], tmp_path / "evil")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    state["extra"] = Evil()
    torch.save(state, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load .*pytorch_model.bin"):
        JanusLikeForConditionalGeneration.from_pretrained(path)
    assert not marker.exists()


def test_clear_errors(tmp_path, deepseek_dir):
    path, reference = deepseek_dir
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        JanusLikeForConditionalGeneration.from_pretrained(unknown)

    sharded = copy_checkpoint(path, tmp_path / "sharded")
    (sharded / "pytorch_model.bin").unlink()
    write_shards(sharded, reference.state_dict())
    (sharded / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="missing .*pytorch_model-00002-of-00002.bin"):
        JanusLikeForConditionalGeneration.from_pretrained(sharded)

    wrong = copy_checkpoint(path, tmp_path / "wrong-shape")
    config = json.loads((wrong / "config.json").read_text())
    config["language_config"]["vocab_size"] = 320
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"language_model.model.embed_tokens.weight.*\(300, 64\).*\(320, 64\)"):
        JanusLikeForConditionalGeneration.from_pretrained(wrong)

    edited = copy_checkpoint(path, tmp_path / "edited")
    state = reference.state_dict()
    state["mystery.weight"] = torch.zeros(2)
    del state["gen_head.vision_head.bias"]
    torch.save(state, edited / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="mystery.weight"):
        JanusLikeForConditionalGeneration.from_pretrained(edited)
    del state["mystery.weight"]
    torch.save(state, edited / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="missing .*gen_head.vision_head.bias"):
        JanusLikeForConditionalGeneration.from_pretrained(edited)

    no_tags = copy_checkpoint(path, tmp_path / "no-tags")
    data = json.loads((no_tags / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<begin_of_image>"]
    (no_tags / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="lacks the special token '<begin_of_image>'"):
        JanusLikeProcessor.from_pretrained(no_tags)
    with pytest.raises(CheckpointError, match="<begin_of_image>"):
        JanusLikeForConditionalGeneration.from_pretrained(no_tags)


# --------------------------------------------------------------------------- malformed checkpoints, options


@pytest.fixture(scope="module")
def own_dir(tmp_path_factory):
    """A tiny model in this package's format (save_pretrained)."""
    model, processor = tiny_model(seed=0)
    path = tmp_path_factory.mktemp("own") / "tiny"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def deepseek_st_dir(tmp_path_factory, tiny_tables):
    """A DeepSeek checkpoint in two safetensors shards with an index."""
    path = tmp_path_factory.mktemp("deepseek-st") / "Janus-Pro-tiny"
    write_deepseek(path, weights="safetensors")
    return path


def one_line_error(error_class, match: str, load) -> str:
    """`load()` raises `error_class` whose one-line message matches `match`; returns the message."""
    with pytest.raises(error_class, match=match) as err:
        load()
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def edit_safetensors(file: Path, edit) -> None:
    from safetensors.torch import load_file

    state = load_file(file)
    edit(state)
    save_file(state, file, metadata={"format": "pt"})


def test_own_format_round_trips_clean_and_refuses_missing_unexpected_or_reshaped_tensors(tmp_path, own_dir):
    model, info = JanusLikeForConditionalGeneration._from_own_format(own_dir, output_loading_info=True)
    assert not any(info.values())  # tied weights and non-persistent buffers are no false alarm
    assert not any(
        JanusLikeForConditionalGeneration._from_own_format(default_model_path(), output_loading_info=True)[1].values()
    )
    model.save_pretrained(tmp_path / "again")
    again = JanusLikeForConditionalGeneration.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())

    bias = "gen_head.vision_head.bias"
    missing = copy_checkpoint(own_dir, tmp_path / "missing")  # transformers would initialise it fresh
    edit_safetensors(missing / "model.safetensors", lambda state: state.pop(bias))
    one_line_error(
        CheckpointError, f"missing: {bias}", lambda: JanusLikeForConditionalGeneration.from_pretrained(missing)
    )
    extra = copy_checkpoint(own_dir, tmp_path / "extra")
    edit_safetensors(extra / "model.safetensors", lambda state: state.update({"mystery.weight": torch.zeros(2)}))
    one_line_error(
        CheckpointError,
        "not in the model: mystery.weight",
        lambda: JanusLikeForConditionalGeneration.from_pretrained(extra),
    )
    reshaped = copy_checkpoint(own_dir, tmp_path / "reshaped")
    edit_safetensors(reshaped / "model.safetensors", lambda state: state.update({bias: torch.zeros(7)}))
    one_line_error(
        CheckpointError,
        rf"{bias} \(checkpoint \(7,\), model \(64,\)\)",
        lambda: JanusLikeForConditionalGeneration.from_pretrained(reshaped),
    )
    vocab = copy_checkpoint(own_dir, tmp_path / "vocab")
    config = json.loads((vocab / "config.json").read_text())
    rows = config["text_config"]["vocab_size"]
    config["text_config"]["vocab_size"] = rows + 16
    (vocab / "config.json").write_text(json.dumps(config))
    one_line_error(
        CheckpointError,
        rf"embed_tokens.weight \(checkpoint \({rows}, 64\), model \({rows + 16}, 64\)\)",
        lambda: JanusLikeForConditionalGeneration.from_pretrained(vocab),
    )


def test_loading_at_warning_verbosity_prints_nothing_for_a_sound_model():
    """Holding the LOAD REPORT must not turn on transformers' other load-time warnings (a logger
    level of its own made it list every 'unsharded' layer)."""
    messages, handler = [], logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    root = logging.getLogger("transformers")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        JanusLikeForConditionalGeneration.from_pretrained(default_model_path())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert messages == []


def test_own_format_errors_come_without_transformers_load_report(tmp_path, own_dir):
    reports = []
    handler = logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage())
    log = logging.getLogger("transformers.modeling_utils")
    log.addHandler(handler)
    log.setLevel(logging.WARNING)  # the suite runs with TRANSFORMERS_VERBOSITY=error
    try:
        reshaped = copy_checkpoint(own_dir, tmp_path / "reshaped")
        edit_safetensors(
            reshaped / "model.safetensors", lambda state: state.update({"gen_head.vision_head.bias": torch.zeros(7)})
        )
        one_line_error(
            CheckpointError, "shape differs", lambda: JanusLikeForConditionalGeneration.from_pretrained(reshaped)
        )
        assert not any("LOAD REPORT" in r for r in reports)  # the one-line error is the whole message
        JanusLikeForConditionalGeneration.from_pretrained(reshaped, ignore_mismatched_sizes=True)
        assert any("LOAD REPORT" in r for r in reports)  # asked to reshape: the table says what was
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)


OWN_FIELDS = [  # edit of the own format's config.json, what the error names
    pytest.param(
        lambda c: c["text_config"].update(hidden_size="64"),
        "config.json: .*'hidden_size' expected int",
        id="hidden_size-string",
    ),
    pytest.param(lambda c: c.update(vq_config=5), "config.json: .*vq_config", id="vq_config-number"),
    pytest.param(
        lambda c: c["text_config"].update(vocab_size=-5), "text_config.vocab_size = -5", id="vocab_size-negative"
    ),
    pytest.param(
        lambda c: c.update(aligner_depth="x"),
        "aligner_depth = 'x'; accepted: an integer >= 1",
        id="aligner_depth-string",
    ),
]


@pytest.mark.parametrize("edit,match", OWN_FIELDS)
def test_own_format_config_fields_of_the_wrong_type(tmp_path, own_dir, edit, match):
    path = copy_checkpoint(own_dir, tmp_path / "own")
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    one_line_error(CheckpointError, match, lambda: JanusLikeForConditionalGeneration.from_pretrained(path))


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def split_own_weights(path: Path) -> None:
    """model.safetensors -> two shards and an index; then remove the second shard."""
    from safetensors.torch import load_file

    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    write_shards(path, state, "safetensors")
    (path / "model-00002-of-00002.safetensors").unlink()


def evil_bin(path: Path) -> None:
    from safetensors.torch import load_file

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {path / 'pwned'}",)

    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save({**state, "extra": Evil()}, path / "pytorch_model.bin")


OWN_DAMAGE = {  # what is done to the own-format directory -> what the error says
    "weights deleted": (lambda p: (p / "model.safetensors").unlink(), "no weights in .*expected model.safetensors"),
    "truncated": (lambda p: truncate(p / "model.safetensors"), "cannot read .*model.safetensors: SafetensorError"),
    "garbage": (lambda p: (p / "model.safetensors").write_bytes(b"garbage" * 10), "cannot read .*model.safetensors"),
    "empty": (lambda p: (p / "model.safetensors").write_bytes(b""), "cannot read .*model.safetensors"),
    "shard missing": (split_own_weights, "missing .*model-00002-of-00002.safetensors"),
    "index not json": (
        lambda p: (split_own_weights(p), (p / "model.safetensors.index.json").write_text("{bad")),
        "model.safetensors.index.json is not a valid shard index",
    ),
    "pickled code": (evil_bin, "refusing to load .*pytorch_model.bin"),
    "bin not a pickle": (
        lambda p: (p / "model.safetensors").rename(p / "pytorch_model.bin"),
        "cannot read .*pytorch_model.bin: it is not a PyTorch weights file",
    ),
}


@pytest.mark.parametrize("damage", list(OWN_DAMAGE))
def test_own_format_unreadable_files_name_the_file(tmp_path, own_dir, damage):
    path = copy_checkpoint(own_dir, tmp_path / "own")
    spoil, match = OWN_DAMAGE[damage]
    spoil(path)
    one_line_error(CheckpointError, match, lambda: JanusLikeForConditionalGeneration.from_pretrained(path))
    assert not (path / "pwned").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_foreign_safetensors_damage_is_a_checkpoint_error_in_load_and_convert(tmp_path, deepseek_st_dir, damage):
    path = copy_checkpoint(deepseek_st_dir, tmp_path / "ds")
    shard = path / "model-00002-of-00002.safetensors"
    {"truncated": truncate, "garbage": lambda f: f.write_bytes(b"garbage" * 10), "empty": lambda f: f.write_bytes(b"")}[
        damage
    ](shard)
    match = "cannot read .*model-00002-of-00002.safetensors"
    one_line_error(CheckpointError, match, lambda: JanusLikeForConditionalGeneration.from_pretrained(path))
    one_line_error(CheckpointError, match, lambda: convert(path, tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("text", [b"[1, 2]", b"null", b"\xff\xfe\x00garbage"], ids=["list", "null", "not-utf8"])
@pytest.mark.parametrize("name", ["config.json", "processor_config.json", "preprocessor_config.json"])
def test_json_files_that_are_not_utf8_json_objects(tmp_path, deepseek_dir, name, text):
    path = copy_checkpoint(deepseek_dir[0], tmp_path / "ds")
    (path / name).write_bytes(text)
    match = f"{name} (must hold a JSON object|is not valid UTF-8 JSON)"
    one_line_error(CheckpointError, match, lambda: JanusLikeForConditionalGeneration.from_pretrained(path))
    one_line_error(CheckpointError, match, lambda: JanusLikeProcessor.from_pretrained(path))


DEEPSEEK_FIELDS = [  # file, edit of its JSON, what the error names
    pytest.param(
        "config.json",
        lambda c: c.update(gen_vision_config=None),
        "gen_vision_config = None",
        id="gen_vision_config-null",
    ),
    pytest.param(
        "config.json",
        lambda c: c.update(gen_vision_config="VQ-16"),
        "gen_vision_config = 'VQ-16'",
        id="gen_vision_config-string",
    ),
    pytest.param(
        "config.json",
        lambda c: c["vision_config"].update(params=[]),
        r"vision_config.params = \[\]",
        id="vision-params-list",
    ),
    pytest.param(
        "config.json",
        lambda c: c["vision_config"]["params"].update(image_size="abc"),
        "vision_config.params.image_size = 'abc'; accepted: an integer",
        id="vision-image_size-string",
    ),
    pytest.param(
        "config.json",
        lambda c: c["vision_config"]["params"].update(select_layer="x"),
        "vision_config.params.select_layer = 'x'; accepted: an integer",
        id="select_layer-string",
    ),
    pytest.param(
        "config.json",
        lambda c: c["vision_config"]["params"].update(pixel_mean="abc"),
        "vision_config.params.pixel_mean = 'abc'; accepted: a list of 3 numbers",
        id="pixel_mean-string",
    ),
    pytest.param(
        "config.json",
        lambda c: c["language_config"].update(hidden_size="64"),
        "config.json: .*'hidden_size' expected int",
        id="hidden_size-string",
    ),
    pytest.param(
        "config.json",
        lambda c: c["language_config"].update(num_attention_heads=3),
        "config.json: .*not a multiple of the number of attention heads",
        id="heads-not-dividing",
    ),
    pytest.param(
        "config.json",
        lambda c: c["language_config"].update(vocab_size=-5),
        "language_config.vocab_size = -5; accepted: an integer >= 1",
        id="vocab_size-negative",
    ),
    pytest.param(
        "preprocessor_config.json",
        lambda c: c.update(image_mean="abc"),
        "image_mean = 'abc'; accepted: a list of 3",
        id="image_mean-string",
    ),
    pytest.param(
        "preprocessor_config.json",
        lambda c: c.update(image_size="abc"),
        "image processor size = 'abc'",
        id="image_size-string",
    ),
    pytest.param(
        "preprocessor_config.json",
        lambda c: c.update(image_std=[0.5, 0, 0.5]),
        "image_std .* 3 positive numbers",
        id="image_std-zero",
    ),
]


@pytest.mark.parametrize("name,edit,match", DEEPSEEK_FIELDS)
def test_deepseek_config_fields_of_the_wrong_type(tmp_path, deepseek_dir, name, edit, match):
    path = copy_checkpoint(deepseek_dir[0], tmp_path / "ds")
    config = json.loads((path / name).read_text())
    edit(config)
    (path / name).write_text(json.dumps(config))
    one_line_error(CheckpointError, match, lambda: JanusLikeForConditionalGeneration.from_pretrained(path))


def test_transformers_config_errors_are_one_line():
    one_line_error(
        CheckpointError,
        "not a valid transformers Janus config: .*'hidden_size' expected int",
        lambda: hf_janus.model_config({"vision_config": {"hidden_size": "x"}}),
    )
    one_line_error(
        CheckpointError,
        "text_config.vocab_size = -5",
        lambda: hf_janus.model_config({"text_config": {"model_type": "llama", "vocab_size": -5}}),
    )


@pytest.mark.parametrize(
    "weight_map",
    [["a"], {"a": 5}, {"a": "../elsewhere.safetensors"}, {}],
    ids=["list", "int-values", "outside-the-directory", "empty"],
)
@pytest.mark.parametrize("layout", ["deepseek", "own"])
def test_shard_index_must_map_names_to_files_beside_it(tmp_path, deepseek_st_dir, own_dir, weight_map, layout):
    path = copy_checkpoint(deepseek_st_dir if layout == "deepseek" else own_dir, tmp_path / "ckpt")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    problem = "lists no tensors" if weight_map == {} else "'weight_map' must map tensor names to shard file names"
    one_line_error(CheckpointError, problem, lambda: JanusLikeForConditionalGeneration.from_pretrained(path))


def test_a_tensor_stored_twice_is_refused_in_load_and_convert(tmp_path, deepseek_st_dir):
    from safetensors.torch import load_file

    path = copy_checkpoint(deepseek_st_dir, tmp_path / "ds")
    (path / "model.safetensors.index.json").unlink()  # shards are then found by name: a stray one joins them
    name, tensor = next(iter(load_file(path / "model-00001-of-00002.safetensors").items()))
    save_file({name: tensor.clone()}, path / "model-00003-of-00002.safetensors", metadata={"format": "pt"})
    one_line_error(
        CheckpointError,
        "holds .* twice .*remove the stray shard",
        lambda: JanusLikeForConditionalGeneration.from_pretrained(path),
    )
    one_line_error(CheckpointError, "holds .* twice", lambda: convert(path, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_tensor_the_mapping_cannot_take_apart(tmp_path, deepseek_dir):
    path, reference = deepseek_dir
    path = copy_checkpoint(path, tmp_path / "ds")
    torch.save(
        {**reference.state_dict(), "vision_model.vision_tower.pos_embed": torch.zeros(())}, path / "pytorch_model.bin"
    )
    one_line_error(
        CheckpointError,
        r"vision_model.vision_tower.pos_embed .*shape \(\)",
        lambda: JanusLikeForConditionalGeneration.from_pretrained(path),
    )


@pytest.mark.parametrize("layout", ["own", "deepseek"])
def test_dtype_and_device_options_are_the_same_for_every_layout(own_dir, deepseek_dir, layout):
    path = own_dir if layout == "own" else deepseek_dir[0]
    model = JanusLikeForConditionalGeneration.from_pretrained(path, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    load = JanusLikeForConditionalGeneration.from_pretrained
    one_line_error(
        SettingsError,
        "dtype=torch.int8 .*accepted: .*'float32', 'bfloat16', 'float16'",
        lambda: load(path, dtype=torch.int8),
    )
    one_line_error(SettingsError, "dtype='fp8' .*accepted", lambda: load(path, dtype="fp8"))
    one_line_error(SettingsError, "device='bogus' .*available: cpu", lambda: load(path, device="bogus"))
    if not torch.cuda.is_available():
        one_line_error(SettingsError, "device='cuda' .*available: cpu", lambda: load(path, device="cuda"))
    one_line_error(SettingsError, "either device or device_map", lambda: load(path, device="cpu", device_map="auto"))
    one_line_error(
        SettingsError,
        "device_map='autoo' is neither a placement strategy nor a device of this machine; accepted: None, 'auto'",
        lambda: load(path, device_map="autoo"),
    )
    one_line_error(
        SettingsError,
        r"device_map\['vq'\]='cuda:7' is not a device of this machine",
        lambda: load(path, device_map={"": "cpu", "vq": "cuda:7"}),
    )
    one_line_error(SettingsError, r"device_map=\['cpu'\] is not a device map", lambda: load(path, device_map=["cpu"]))
    one_line_error(
        SettingsError,
        "unsupported loading option.*dtpye.*accepted: dtype, device",
        lambda: load(path, dtpye="bfloat16"),
    )
    sdpa = load(path, attn_implementation="sdpa")  # transformers would hand it to the VQ too, which refuses it
    assert (sdpa.language_model.config._attn_implementation, sdpa.vq.config._attn_implementation) == ("sdpa", "eager")
    if not is_flash_attn_2_available():
        one_line_error(
            SettingsError,
            "attn_implementation = 'flash_attention_2' cannot be used here",
            lambda: load(path, attn_implementation="flash_attention_2"),
        )
    for device_map in ({"": "cpu"}, "cpu"):
        placed = load(path, device_map=device_map)
        assert {p.device.type for p in placed.parameters()} == {"cpu"}


def test_convert_into_a_path_below_a_file(tmp_path, deepseek_dir, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write .*afile/sub"):
        convert(deepseek_dir[0], tmp_path / "afile" / "sub")
    assert cli_main(["convert", str(deepseek_dir[0]), str(tmp_path / "afile" / "sub")]) == 2
    assert "afile" in capsys.readouterr().err


def test_convert_refuses_a_symlinked_destination_before_converting(tmp_path, deepseek_dir, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    monkeypatch.setattr("janus_like.convert.open_checkpoint", lambda src: pytest.fail("converted first"))
    for dst in ("link", "dangling"):
        one_line_error(
            CheckpointError, f"{dst} is a symbolic link", lambda dst=dst: convert(deepseek_dir[0], tmp_path / dst)
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "empty", "link"] and not any(
        (tmp_path / "empty").iterdir()
    )


# --------------------------------------------------------------------------- real size, no memory

PRO_1B = {  # Janus-Pro-1B's config.json (notes/deepseek_janus.md §1)
    "aligner_config": {
        "cls": "MlpProjector",
        "model_type": "aligner",
        "params": {"depth": 2, "input_dim": 1024, "n_embed": 2048, "projector_type": "mlp_gelu"},
    },
    "gen_aligner_config": {
        "cls": "MlpProjector",
        "model_type": "gen_aligner",
        "params": {"depth": 2, "input_dim": 8, "n_embed": 2048, "projector_type": "mlp_gelu"},
    },
    "gen_head_config": {
        "cls": "vision_head",
        "model_type": "gen_head",
        "params": {"image_token_embed": 2048, "image_token_size": 16384, "n_embed": 2048},
    },
    "gen_vision_config": {
        "cls": "VQ-16",
        "model_type": "gen_vision",
        "params": {"image_token_size": 16384, "n_embed": 8},
    },
    "language_config": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "max_position_embeddings": 16384,
        "model_type": "llama",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "num_key_value_heads": 16,
        "torch_dtype": "bfloat16",
        "vocab_size": 102400,
    },
    "model_type": "multi_modality",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "vision_config": {
        "cls": "CLIPVisionTower",
        "model_type": "vision",
        "params": {
            "image_size": 384,
            "model_name": "siglip_large_patch16_384",
            "select_feature": "same",
            "select_layer": -1,
        },
    },
}


def check_mapping(layout, source_state: dict, config) -> int:
    """Map every source tensor (meta) and compare with the model the config builds (meta)."""
    with torch.device("meta"):
        ours = JanusLikeForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    produced = {}
    for key, tensor in source_state.items():
        mapped = layout.map_tensor(key, tensor)
        assert mapped is not None, f"no mapping for {key}"
        for name, value in mapped:
            assert name in expected, f"{key} -> {name} is not a model tensor"
            assert tuple(value.shape) == expected[name], (key, name, tuple(value.shape), expected[name])
            produced[name] = value
    for target, source in layout.fallbacks({"tie_word_embeddings": True}).items():
        produced.setdefault(target, produced[source])
    assert produced.keys() == expected.keys()
    return sum(p.numel() for p in ours.parameters())


def test_real_size_janus_pro_1b_key_mapping_on_meta():
    with torch.device("meta"):
        reference = ref.MultiModalityCausalLM(PRO_1B)
    source = reference.state_dict()
    assert len([k for k in source if k.startswith("vision_model.")]) == 306  # timm tower incl. attn_pool
    assert len([k for k in source if k.startswith("gen_vision_model.")]) == 344  # LlamaGen VQ-16
    total = check_mapping(deepseek, source, deepseek.model_config(PRO_1B))
    assert round(total / 1e9, 2) == 2.08  # 1.65B LLM (untied lm_head) + 0.30B SigLIP-L + 0.07B VQ + glue


def test_real_size_transformers_janus_pro_1b_key_mapping_on_meta():
    from transformers import JanusConfig, JanusForConditionalGeneration

    raw = JanusConfig(
        text_config=dict(
            model_type="llama",
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            vocab_size=102400,
            max_position_embeddings=16384,
        )
    ).to_dict()
    with torch.device("meta"):
        hf = JanusForConditionalGeneration(JanusConfig(**raw))
    check_mapping(hf_janus, hf.state_dict(), hf_janus.model_config(raw))
