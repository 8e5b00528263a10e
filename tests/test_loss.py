"""Task-masked cross-entropy (docs/ARCHITECTURE.md §2): what is scored, by which head, and where gradients go."""

import json

import torch

from janus_like.layout import GEN_IMAGE, IGNORE_INDEX, UND_IMAGE
from janus_like.testing import shape_image, tiny_model, write_image


def loss_of(model, batch, **changes):
    batch = {**batch, **changes}
    torch.manual_seed(0)
    return model(**batch)


def test_mixed_batch_forward_backward_reaches_every_trained_part(tiny, records):
    model, processor = tiny
    model.train()
    batch = processor(records)
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.text_tokens > 0 and out.image_tokens > 0
    out.loss.backward()
    for name in (
        "language_model.lm_head.weight",
        "gen_head.vision_head.weight",
        "gen_embed.weight",
        "aligner.layers.0.weight",
        "vision_model.embeddings.patch_embedding.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_prompt_and_und_image_labels_do_not_count(tiny, records):
    model, processor = tiny
    batch = processor(records[:1])
    labels, modality = batch["labels"], batch["modality"]
    # prompt positions (system, user turn, image tags) are never targets
    first_target = int((labels[0] != IGNORE_INDEX).nonzero()[0])
    assert (labels[0, :first_target] == IGNORE_INDEX).all()
    assert (
        processor.decode(batch["input_ids"][0, first_target:][labels[0, first_target:] != IGNORE_INDEX].tolist())
        == " A red circle."
    )
    base = loss_of(model, batch).loss
    # und-image positions are never scored, whatever label they carry
    und_labels = torch.where(modality == UND_IMAGE, torch.randint_like(labels, 0, 200), labels)
    assert torch.equal(loss_of(model, batch, labels=und_labels).loss, base)
    # but an answer token's label changes the loss
    answer_labels = labels.clone()
    answer_labels[0, first_target] = (answer_labels[0, first_target] + 1) % 200
    assert not torch.equal(loss_of(model, batch, labels=answer_labels).loss, base)


def test_changing_an_image_code_changes_the_loss(tiny, records):
    model, processor = tiny
    batch = processor(records[1:2])
    ids, labels = model.fill_gen_codes(
        batch["input_ids"], batch["modality"], batch["labels"], batch["gen_pixel_values"]
    )
    plain = {k: v for k, v in batch.items() if k != "gen_pixel_values"}
    base = loss_of(model, plain, input_ids=ids, labels=labels).loss
    gen_positions = (batch["modality"][0] == GEN_IMAGE).nonzero().flatten()
    changed = labels.clone()
    changed[0, gen_positions[3]] = (changed[0, gen_positions[3]] + 1) % model.config.vq_config.codebook_size
    assert not torch.equal(loss_of(model, plain, input_ids=ids, labels=changed).loss, base)
    # the same through the gen_pixel_values path
    assert torch.allclose(loss_of(model, batch).loss, base)


def test_task_counts(tiny, records):
    model, processor = tiny
    und = model(**processor(records[:1]))
    gen = model(**processor(records[1:2]))
    assert und.image_tokens == 0 and und.text_tokens == len(processor.encode_text(" A red circle.")) + 1
    assert gen.text_tokens == 0 and gen.image_tokens == processor.num_gen_tokens
    inter = model(**processor(records[2:3]))
    assert inter.image_tokens == 2 * processor.num_gen_tokens
    # interleaved: the model learns to open an image, but <end_of_image> is forced and not trained
    batch = processor(records[2:3])
    scored = batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX]
    assert (scored == processor.image_start_id).sum() == 2
    assert (scored == processor.image_end_id).sum() == 0


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


def _untouched(grad):
    return grad is None or grad.abs().sum() == 0


def test_understanding_batch_leaves_generation_parts_alone(tiny, records):
    model, processor = tiny
    model.train()
    model(**processor(records[:1])).loss.backward()
    grads = _grads(model)
    for name, grad in grads.items():
        if name.startswith(("gen_head", "gen_embed", "gen_aligner", "vq.")):
            assert _untouched(grad), name
    assert not _untouched(grads["aligner.layers.0.weight"])


def test_generation_batch_leaves_understanding_parts_and_lm_head_alone(records):
    model, processor = tiny_model(seed=0)  # lm_head not tied to the input embeddings
    assert not model.config.text_config.tie_word_embeddings
    model.train()
    model(**processor(records[1:2])).loss.backward()
    grads = _grads(model)
    for name, grad in grads.items():
        if name.startswith(("vision_model", "aligner", "language_model.lm_head", "vq.")):
            assert _untouched(grad), name
    assert not _untouched(grads["gen_head.vision_head.weight"])
    assert not _untouched(grads["gen_embed.weight"])


def test_run_all_parts_runs_every_part_for_sharded_training_and_adds_nothing(records):
    """A text-only batch with `run_all_parts` (what FSDP needs): the same loss, and the vision tower,
    the code embedding and the image head run and get gradients, all zero."""
    model, processor = tiny_model(seed=0)
    model.train()
    batch = processor(records[3:])
    plain = model(**batch)
    plain.loss.backward()
    untouched = {n for n, g in _grads(model).items() if g is None}
    assert {
        "vision_model.embeddings.patch_embedding.weight",
        "gen_embed.weight",
        "gen_head.vision_head.weight",
    } <= untouched
    model.zero_grad(set_to_none=True)
    every = model(**batch, run_all_parts=True)
    assert torch.equal(every.loss, plain.loss) and every.image_tokens == 0
    every.loss.backward()
    grads = _grads(model)
    for name in (n for n in untouched if not n.startswith("vq.")):  # the VQ tokenizer never trains
        assert grads[name] is not None and grads[name].abs().sum() == 0, name
    assert not _untouched(grads["language_model.lm_head.weight"])


def test_cfg_prompt_dropout_gives_the_unconditional_prompt(tiny, records):
    _, processor = tiny
    cond = processor(records[1:2], cfg_dropout=0.0)
    uncond = processor(records[1:2], cfg_dropout=1.0)
    assert cond["input_ids"].shape == uncond["input_ids"].shape
    ids = uncond["input_ids"][0]
    start = int((ids == processor.image_start_id).nonzero()[0])
    assert ids[0] == processor.bos_id
    assert (ids[1:start] == processor.pad_id).all()
    assert torch.equal(uncond["labels"], cond["labels"])


def test_cfg_prompt_dropout_of_an_edit_keeps_the_input_image_like_the_engines_twin(tiny):
    _, processor = tiny
    record = {
        "task": "generation",
        "prompt": "make it blue",
        "image": shape_image(color="blue"),
        "input_images": [shape_image()],
    }
    dropped = processor.record_to_sequence(record, drop_prompt=True)
    twin = processor.unconditional(processor.generation_prompt("make it blue", [shape_image()]), keep_images=True)
    assert dropped.ids[: len(twin)] == twin.ids and dropped.modality[: len(twin)] == twin.modality
    assert len(dropped.und_pixels) == 1 and torch.equal(dropped.und_pixels[0], twin.und_pixels[0])


def test_cfg_image_dropout_of_an_edit_drops_the_image_too_like_the_engines_third_slot(tiny, tmp_path):
    from janus_like.training.data import DataIndex, MicroBatches, Mixture

    _, processor = tiny
    record = {"task": "generation", "prompt": "make it blue", "image": "out.png", "input_images": ["in.png"]}
    write_image(tmp_path / "in.png", shape_image())
    write_image(tmp_path / "out.png", shape_image(color="blue"))
    dropped = processor.record_to_sequence(record, tmp_path, drop_prompt=True, drop_images=True)
    bare = processor.unconditional(processor.generation_prompt("make it blue", [shape_image()]))
    assert dropped.ids[: len(bare)] == bare.ids and dropped.modality[: len(bare)] == bare.modality
    assert not dropped.und_pixels
    # in training data: of the dropped prompts, the share cfg_image_dropout loses the images too
    (tmp_path / "edits.jsonl").write_text(json.dumps(record) + "\n")
    index = DataIndex([tmp_path / "edits.jsonl"])
    data = lambda share: MicroBatches(
        index,
        Mixture(index, None, seed=0),
        processor,
        batch_size=1,
        world_size=1,
        rank=0,
        max_length=256,
        packing=False,
        cfg_dropout=0.5,
        seed=0,
        cfg_image_dropout=share,
    )
    kept = lambda share: [len(data(share).sequence(i).und_pixels) for i in range(200)]
    assert 0 not in kept(0.0)
    assert 60 < kept(1.0).count(0) < 140  # every dropped prompt (about half) lost its image
    assert kept(0.5).count(0) < kept(1.0).count(0)


def test_tiny_model_overfits_one_interleaved_example(records):
    model, processor = tiny_model(seed=0)
    model.train()
    batch = processor(records[2:3])
    ids, labels = model.fill_gen_codes(
        batch["input_ids"], batch["modality"], batch["labels"], batch.pop("gen_pixel_values")
    )
    batch.update(input_ids=ids, labels=labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert out.loss.item() < 0.05, out.loss.item()
    assert out.text_tokens > 0 and out.image_tokens > 0


def test_chunked_cross_entropy_equals_the_plain_one():
    from janus_like.modeling import chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    states = torch.randn(5000, 16, requires_grad=True)
    targets = torch.randint(0, 50, (5000,))
    chunked = chunked_cross_entropy(head, states, targets, chunk=1000)
    chunked.backward()
    grad_chunked, states.grad = states.grad.clone(), None
    plain = torch.nn.functional.cross_entropy(head(states), targets, reduction="sum")
    plain.backward()
    assert torch.allclose(chunked, plain, rtol=1e-5)
    assert torch.allclose(grad_chunked, states.grad, atol=1e-6)
