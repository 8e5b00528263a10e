"""Interleaved generation with a tiny model trained here: text, an image of exactly N codes, text;
rows entering IMAGE at different steps batch exactly like rows run alone; the twin is right."""

import pytest
import torch

from janus_like import JanusLikePipeline
from janus_like.generation import GenerationEngine, GenerationSettings, Request
from janus_like.generation.sampling import guided_logits
from janus_like.layout import GEN_IMAGE, TEXT, TokenSequence
from janus_like.testing import shape_image, tiny_model

EXAMPLES = {  # prompt -> (text before the image, image, text after); different lengths before the image
    "red": (" Red:", shape_image("circle", "red"), " done."),
    "blue": (" A blue square here:", shape_image("square", "blue"), " ok"),
    "green": (" Hi", shape_image("circle", "green", position="left"), " fine!"),
}


@pytest.fixture(scope="module")
def trained():
    model, processor = tiny_model(seed=0)
    records = [
        {
            "task": "interleaved",
            "prompt": prompt,
            "segments": [
                {"type": "text", "text": before},
                {"type": "image", "image": image},
                {"type": "text", "text": after},
            ],
        }
        for prompt, (before, image, after) in EXAMPLES.items()
    ]
    records.append(
        {
            "task": "interleaved",
            "prompt": "two",
            "segments": [  # two images in one answer
                {"type": "text", "text": " A:"},
                {"type": "image", "image": shape_image("circle", "red")},
                {"type": "text", "text": " B:"},
                {"type": "image", "image": shape_image("square", "blue", position="right")},
                {"type": "text", "text": " end"},
            ],
        }
    )
    batch = processor(records)
    ids, labels = model.fill_gen_codes(
        batch["input_ids"], batch["modality"], batch["labels"], batch.pop("gen_pixel_values")
    )
    batch.update(input_ids=ids, labels=labels)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(**batch).loss
        if loss.item() < 0.01:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return JanusLikePipeline(model, processor)


def _prompt(pipe, text):
    return pipe.processor.conversation([{"role": "user", "content": text}], system_prompt="")


def test_one_call_writes_text_then_an_image_of_n_codes_then_text(trained):
    parts = trained.interleave("blue", temperature=0, max_new_tokens=40, max_images=2)
    before, _, after = EXAMPLES["blue"]
    assert [type(p).__name__ for p in parts] == ["str", "Image", "str"]
    assert parts[0] == before and parts[2] == after
    result = trained.engine.generate(
        [Request(_prompt(trained, "blue"))], GenerationSettings(temperature=0, max_new_tokens=40, max_images=2)
    )[0]
    p, n = trained.processor, trained.processor.num_gen_tokens
    ids = result.token_ids
    start = ids.index(p.image_start_id)
    assert ids[start + 1 + n] == p.image_end_id  # exactly N codes, then the forced end
    assert len(result.codes) == 1 and result.codes[0].tolist() == ids[start + 1 : start + 1 + n]
    assert ids[-1] == p.eos_id and result.finish_reason == "eos"


def test_rows_entering_image_mode_at_different_steps_batch_like_alone(trained):
    settings = GenerationSettings(temperature=0, max_new_tokens=40, max_images=2, cfg_scale=3.0)
    prompts = [_prompt(trained, text) for text in EXAMPLES]
    together = trained.engine.generate([Request(q) for q in prompts], settings)
    starts = {r.token_ids.index(trained.processor.image_start_id) for r in together}
    assert len(starts) == 3  # the rows open their images at three different steps
    for prompt, batched in zip(prompts, together):
        alone = trained.engine.generate([Request(prompt)], settings)[0]
        assert batched.token_ids == alone.token_ids
        assert len(batched.images) == 1


def test_interleaved_twin_is_the_unconditional_prompt_of_the_row_so_far(trained):
    p, n, scale = trained.processor, trained.processor.num_gen_tokens, 3.0
    prompt = _prompt(trained, "green")
    result = trained.engine.generate(
        [Request(prompt)], GenerationSettings(temperature=0, max_new_tokens=40, max_images=1, cfg_scale=scale)
    )[0]
    start = result.token_ids.index(p.image_start_id)
    context = TokenSequence(list(prompt.ids), list(prompt.modality), list(prompt.trainable))
    context.add(result.token_ids[: start + 1], TEXT, False)
    twin = p.unconditional(context)
    codes = result.codes[0].tolist()
    with torch.no_grad():
        logits = []
        for seq in (context, twin):
            ids = torch.tensor([seq.ids + codes[:-1]])
            modality = torch.tensor([seq.modality + [GEN_IMAGE] * (n - 1)])
            hidden = trained.model(ids, modality).last_hidden_state[0, len(seq) - 1 :]
            logits.append(trained.model.image_logits(hidden))
    assert guided_logits(*logits, scale).argmax(-1).tolist() == codes


def test_image_temperature_samples_the_images_alone_on_the_scheduler_and_the_engine(trained):
    """Greedy words around sampled images: the words are the all-greedy call's, the codes are not;
    image_temperature None is the temperature."""
    greedy = GenerationSettings(temperature=0, max_new_tokens=40, max_images=1, seed=3)
    # this overfit model is sure of every code: a hot image temperature makes drawing show
    mixed = GenerationSettings(temperature=0, image_temperature=50.0, max_new_tokens=40, max_images=1, seed=3)
    request = [Request(_prompt(trained, "blue"))]
    for run in (trained.engine.generate, lambda r, s: list(trained.scheduler.submit(r, s))[-1].results):
        (plain,), (drawn,) = run(request, greedy), run(request, mixed)
        start = plain.token_ids.index(trained.processor.image_start_id)
        assert drawn.token_ids[: start + 1] == plain.token_ids[: start + 1]  # the same greedy words
        assert drawn.codes[0].tolist() != plain.codes[0].tolist()  # then drawn codes, not the argmax
        assert run(request, GenerationSettings(temperature=0, image_temperature=None, max_new_tokens=40,
                                               max_images=1, seed=3))[0].token_ids == plain.token_ids  # fmt: skip
    parts = trained.interleave("blue", temperature=0, image_temperature=50.0, seed=3, max_new_tokens=40, max_images=1)
    assert parts[0] == EXAMPLES["blue"][0]


def test_max_images_zero_never_opens_an_image(trained):
    parts = trained.interleave("red", temperature=0, max_new_tokens=20, max_images=0)
    assert all(isinstance(part, str) for part in parts)
    assert trained.chat("red", max_new_tokens=20) == trained.chat(
        [{"role": "user", "content": "red"}], max_new_tokens=20
    )


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_every_token_of_a_two_image_answer_equals_cache_free_forwards(trained, scale):
    """The cache holds the training layout (`<begin_of_image>` c1 … cN `<end_of_image>`, the last
    code included) and each twin the unconditional prompt of its row so far: every greedy token,
    text or code, equals the argmax of full forwards without any cache."""
    p, n, model = trained.processor, trained.processor.num_gen_tokens, trained.model
    prompt = _prompt(trained, "two")
    settings = GenerationSettings(temperature=0, max_new_tokens=40, max_images=2, cfg_scale=scale)
    result = trained.engine.generate([Request(prompt)], settings)[0]
    assert len(result.codes) == 2 and result.finish_reason == "eos"
    context = TokenSequence(list(prompt.ids), list(prompt.modality), list(prompt.trainable))
    twin, code_index = None, 0
    for token in result.token_ids:
        in_image = 0 < code_index <= n
        if in_image:
            seqs = (context, twin) if scale != 1.0 else (context,)
            with torch.no_grad():
                logits = [
                    model.image_logits(
                        model(torch.tensor([s.ids]), torch.tensor([s.modality])).last_hidden_state[0, -1]
                    )
                    for s in seqs
                ]
            guided = guided_logits(*logits, scale) if scale != 1.0 else logits[0]
            assert int(guided.argmax()) == token
            for s in seqs:
                s.add([token], GEN_IMAGE, False)
            code_index += 1
            continue
        if code_index == n + 1:  # the forced <end_of_image>
            assert token == p.image_end_id
            code_index = 0
        else:
            with torch.no_grad():
                hidden = model(torch.tensor([context.ids]), torch.tensor([context.modality])).last_hidden_state
            assert int(model.text_logits(hidden[0, -1]).argmax()) == token
        context.add([token], TEXT, False)
        if token == p.image_start_id:
            twin, code_index = p.unconditional(context), 1


@pytest.mark.slow
def test_compiled_interleaving_equals_eager(trained):
    requests = [Request(_prompt(trained, text)) for text in ("two", "blue", "green")]
    settings = GenerationSettings(temperature=0, cfg_scale=3.0, max_new_tokens=40, max_images=2)
    eager = trained.engine.generate(requests, settings)
    compiled = GenerationEngine(trained.model, trained.processor, compile=True).generate(requests, settings)
    assert [len(r.codes) for r in eager] == [2, 1, 1]  # images opened at different steps, twins prefilled
    assert [r.token_ids for r in compiled] == [r.token_ids for r in eager]
