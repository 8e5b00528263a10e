"""The tokenizer workbench (top-level tokenizers/, not a package): VQ and text tokenizer training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from janus_like import JanusLikeProcessor, JanusLikeVQConfig, JanusLikeVQModel
from janus_like.testing import BOS, EOS, IMAGE_TOKENS, PAD, tiny_config

WORKBENCH = Path(__file__).resolve().parents[1] / "tokenizers"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"workbench_{name}", WORKBENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_workbench_is_not_a_package_and_does_not_shadow_hf_tokenizers():
    import tokenizers

    assert not (WORKBENCH / "__init__.py").exists()
    assert hasattr(tokenizers, "Tokenizer") and "site-packages" in tokenizers.__file__


def test_train_vq_improves_reconstruction_and_saves_a_loadable_model(tmp_path, capsys):
    train_vq = load_script("train_vq")
    args = train_vq.parse_args(
        [
            "--tiny",
            "--image-size",
            "16",
            "--steps",
            "25",
            "--batch-size",
            "8",
            "--synthetic",
            "32",
            "--eval-images",
            "8",
            "--lr",
            "3e-3",
            "--dead-code-threshold",
            "1.0",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    report = train_vq.train(args)
    assert report["psnr"] > report["psnr_before"] + 5, report
    assert 0 < report["codebook_usage"] <= 1
    assert "PSNR" in capsys.readouterr().out
    assert (tmp_path / "reconstructions.png").stat().st_size > 500
    vq = JanusLikeVQModel.from_pretrained(tmp_path / "model")
    assert vq.config.threshold_ema_dead_code == 1.0
    codes = vq.encode(torch.zeros(1, 3, 16, 16))
    assert codes.shape == (1, 16)


def test_a_patch_encoder_codes_each_patch_from_its_own_pixels_only(tmp_path):
    """Pixels changed outside a patch leave its code alone (with the conv+attention encoder they do
    not), and the model saves, passes the checkpoint checks and loads back."""
    config = JanusLikeVQConfig(**load_script("train_vq").TINY, patch_encoder=True)
    torch.manual_seed(0)
    vq = JanusLikeVQModel(config).eval()
    f = config.downsample_factor
    image = torch.rand(1, 3, 4 * f, 4 * f) * 2 - 1
    changed = image.clone()
    changed[..., f:, :] = -changed[..., f:, :]  # every row of patches but the first
    before, after = (vq.encode(x).view(4, 4) for x in (image, changed))
    assert torch.equal(before[0], after[0]) and not torch.equal(before[1:], after[1:])
    conv = JanusLikeVQModel(JanusLikeVQConfig(**load_script("train_vq").TINY)).eval()
    assert not torch.equal(conv.encode(image).view(4, 4)[0], conv.encode(changed).view(4, 4)[0])
    vq.save_pretrained(tmp_path)
    again = JanusLikeVQModel.from_pretrained(tmp_path)
    assert again.config.patch_encoder and torch.equal(again.encode(image), vq.encode(image))


def test_a_composed_model_with_a_patch_encoder_passes_the_checkpoint_checks(tmp_path):
    from janus_like import JanusLikeForConditionalGeneration
    from janus_like.testing import tiny_model

    model, processor = tiny_model(vq_config={"patch_encoder": True})
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = JanusLikeForConditionalGeneration.from_pretrained(tmp_path)  # config checked against weights
    assert loaded.config.vq_config.patch_encoder
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_train_vq_holdout_never_trains_on_the_evaluation_images(tmp_path, capsys, monkeypatch):
    from janus_like.testing import random_image

    train_vq = load_script("train_vq")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        random_image(16, seed=i).save(folder / f"{i:02d}.png")
    args = train_vq.parse_args(
        [
            "--tiny",
            "--image-size",
            "16",
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--images",
            str(folder),
            "--holdout",
            "4",
            "--codebook-size",
            "512",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    images = train_vq.image_tensors(str(folder), 16, 0, 0)
    held_out = {tuple(x.flatten().tolist()) for x in images[-4:]}
    trained_on, forward = [], train_vq.JanusLikeVQModel.forward

    def recording(self, pixels, *rest, **kwargs):
        if self.training:
            trained_on.extend(tuple(x.flatten().tolist()) for x in pixels)
        return forward(self, pixels, *rest, **kwargs)

    monkeypatch.setattr(train_vq.JanusLikeVQModel, "forward", recording)
    train_vq.train(args)
    assert trained_on and not held_out & set(trained_on)
    # 4 images x 16 codes cannot show more than 64 of 512 codes: the report says so
    assert "at most 12.5% with 4 images (on 4 held-out images)" in capsys.readouterr().out
    # the synthetic shapes world repeats its 45 scenes: nothing could be held out
    with pytest.raises(SystemExit) as exit_:
        train_vq.parse_args(["--tiny", "--holdout", "4", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "--holdout needs --images" in capsys.readouterr().err


def test_dead_codes_are_replaced():
    """With the dead-code threshold on, unused codes are re-seeded from the batch, so usage rises."""
    train_vq = load_script("train_vq")
    images = train_vq.image_tensors(None, 16, 16, seed=0)
    usage = {}
    for threshold in (0.0, 2.0):
        torch.manual_seed(0)
        vq = JanusLikeVQModel(train_vq.JanusLikeVQConfig(**train_vq.TINY, threshold_ema_dead_code=threshold)).train()
        with torch.no_grad():  # start collapsed: every code far from the data except one
            vq.quantize._codebook.embed.copy_(-vq.quantize._codebook.embed.abs())
        for _ in range(3):
            vq(images)
        usage[threshold] = train_vq.evaluate(vq, images, 16)["codebook_usage"]
    assert usage[2.0] > usage[0.0], usage


def test_encode_gives_the_same_codes_under_autocast():
    """A training target must not depend on the trainer's mixed precision: with 4096 codes in 4
    dimensions nearly every patch has a near tie, which bf16 rounding would break differently."""
    train_vq = load_script("train_vq")
    torch.manual_seed(0)
    vq = JanusLikeVQModel(JanusLikeVQConfig(**dict(train_vq.TINY, codebook_size=4096, codebook_dim=4))).eval()
    images = train_vq.image_tensors(None, 16, 16, seed=0)
    plain = vq.encode(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(vq.encode(images), plain)


def test_merging_codes_keeps_one_code_per_look_and_parks_the_rest():
    """Near-twin codes (as dead-code replacement makes them) collapse into one; unused codes are
    never chosen again; what remains is stable under bf16 rounding."""
    train_vq = load_script("train_vq")
    torch.manual_seed(0)
    vq = JanusLikeVQModel(JanusLikeVQConfig(**dict(train_vq.TINY, patch_encoder=True))).eval()
    images = train_vq.image_tensors(None, 16, 32, seed=0)
    ids = vq.encode(images).flatten()
    used = ids.unique()
    unused = [c for c in range(vq.config.codebook_size) if c not in set(used.tolist())]
    with torch.no_grad():  # give the three most used codes twins 1e-4 away, as dead-code replacement does
        for code, twin in zip(torch.bincount(ids).argsort(descending=True)[:3].tolist(), unused):
            nudged = vq.codebook[code] + 1e-4 * torch.randn_like(vq.codebook[code])
            vq.codebook[twin] = torch.nn.functional.normalize(nudged, dim=0)
    kept = train_vq.merge_near_codes(vq, images, 0.003, 16)
    vq.eval()
    after = vq.encode(images).flatten().unique()
    book = torch.nn.functional.normalize(vq.codebook[after], dim=-1)
    similarity = book @ book.t() - 2 * torch.eye(len(after))
    assert len(after) == kept <= len(used)
    assert float(similarity.max()) < 1 - 0.003  # no two codes in use within the tolerance
    parked = [c for c in range(vq.config.codebook_size) if c not in set(after.tolist())]
    assert torch.allclose(vq.codebook[parked], vq.codebook[parked[0]].expand(len(parked), -1))


def test_adversarial_loss_runs(tmp_path):
    train_vq = load_script("train_vq")
    args = train_vq.parse_args(
        [
            "--tiny",
            "--image-size",
            "16",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--synthetic",
            "8",
            "--eval-images",
            "4",
            "--adversarial-weight",
            "0.1",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    assert train_vq.train(args)["psnr"] > 0


def test_train_text_tokenizer_with_the_special_tokens(tmp_path):
    train_text = load_script("train_text")
    corpus = tmp_path / "data.jsonl"
    records = [{"task": "text", "text": f"the red circle is on the left, number {i}"} for i in range(50)]
    records.append({"task": "generation", "prompt": "a blue square on the right", "image": "x.png"})
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "notes.txt").write_text("green squares and red circles\n" * 20)
    out = tmp_path / "tok"
    train_text.main(["--files", str(corpus), str(tmp_path / "notes.txt"), "--vocab-size", "400", "--out", str(out)])

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.bos_token == BOS and tok.eos_token == EOS and tok.pad_token == PAD
    for special in (BOS, EOS, PAD, *IMAGE_TOKENS):
        assert len(tok.encode(special, add_special_tokens=False)) == 1, special
    text = "the red circle is on the left"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) < len(text) / 2  # merges were learned
    assert tok.decode(ids) == text
    unseen = "unseen ünïcode ✓"  # byte level: nothing is unknown
    assert tok.decode(tok.encode(unseen, add_special_tokens=False)) == unseen
    # a janus_like processor accepts it as is
    processor = JanusLikeProcessor(tok, tiny_config(len(tok)))
    seq = processor.record_to_sequence({"task": "text", "text": text})
    assert seq.ids[0] == tok.bos_token_id and seq.ids[-1] == tok.eos_token_id


def test_train_text_into_a_folder_of_other_files_keeps_them_and_replaces_only_its_own(tmp_path):
    """--out may be the corpus folder itself: the tokenizer's files join it; a second run replaces them."""
    train_text = load_script("train_text")
    corpus = tmp_path / "notes.txt"
    corpus.write_text("green squares and red circles\n" * 20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "keep.txt").write_text("mine")
    for vocab in (270, 280):  # the corpus has room for 284
        train_text.main(
            ["--files", str(corpus), "--vocab-size", str(vocab), "--min-frequency", "1", "--out", str(tmp_path)]
        )
        assert corpus.read_text().startswith("green") and (tmp_path / "sub" / "keep.txt").read_text() == "mine"
        assert len(AutoTokenizer.from_pretrained(tmp_path)) == vocab


@pytest.mark.parametrize(
    "script, argv, words",
    [
        ("train_text", ["--files", "{tmp}/missing.txt"], "not a file"),
        ("train_text", ["--files", "{tmp}/latin1.txt"], "not UTF-8 text"),
        ("train_text", ["--files", "{tmp}/latin1.txt", "--vocab-size", "-5"], "--vocab-size must be at least"),
        ("train_vq", ["--tiny", "--batch-size", "0"], "--batch-size"),
        ("train_vq", ["--tiny", "--lr", "nan"], "--lr"),
        ("train_vq", ["--tiny", "--out", "{tmp}/latin1.txt"], "is a file, not a folder"),
        ("train_vq", ["--tiny", "--image-size", "18"], "--image-size 18 is not a multiple of 4"),
        ("train_vq", ["--image-size", "24"], "--image-size 24 is not a multiple of 16"),
    ],
)
def test_workbench_scripts_refuse_bad_arguments(tmp_path, capsys, script, argv, words):
    """Before any training, with exit status 2 and the problem named (not a traceback)."""
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    module = load_script(script)
    args = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        module.main(args) if script == "train_text" else module.parse_args(args)
    assert exit_.value.code == 2 and words in capsys.readouterr().err
