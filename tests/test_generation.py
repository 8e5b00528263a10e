"""The generation engine (docs/ARCHITECTURE.md §3): guidance, sampling, seeds, streaming, stops, KV size,
bad settings."""

import pytest
import torch
from transformers import StaticCache

from janus_like import GenerationError, PromptError, SettingsError
from janus_like.generation import (
    Done,
    GenerationEngine,
    GenerationSettings,
    ImageDone,
    ImageProgress,
    Request,
    TextDelta,
)
from janus_like.generation import engine as engine_module
from janus_like.generation.sampling import filter_top_k_top_p, guided_logits, image_guided_logits, plausible, sample
from janus_like.generation.settings import MAX_IMAGES_PER_PROMPT, check_num_images
from janus_like.layout import GEN_IMAGE
from janus_like.testing import shape_image, tiny_model, widen_weights


def _with_codes(processor, seq, codes):
    """A copy of `seq` followed by generated image codes (to score it in one full forward)."""
    ids = torch.tensor([seq.ids + codes])
    modality = torch.tensor([seq.modality + [GEN_IMAGE] * len(codes)])
    return ids, modality


def test_cfg_codes_follow_u_plus_s_times_c_minus_u_computed_by_hand(tiny):
    model, processor = tiny
    scale = 3.0
    cond = processor.generation_prompt("a red circle")
    uncond = processor.unconditional(cond)
    assert uncond.ids[0] == processor.bos_id and uncond.ids[-1] == processor.image_start_id
    assert set(uncond.ids[1:-1]) == {processor.pad_id}
    engine = GenerationEngine(model, processor)
    codes = engine.generate([Request(cond, "image")], GenerationSettings(temperature=0, cfg_scale=scale))[0].codes[0]
    # by hand: full forwards without any cache over prompt + codes, guided argmax at every step
    with torch.no_grad():
        hidden = [
            model(*_with_codes(processor, s, codes[:-1].tolist())).last_hidden_state[0, len(s) - 1 :]
            for s in (cond, uncond)
        ]
        c, u = (model.image_logits(h) for h in hidden)
    by_hand = u + scale * (c - u)
    assert torch.equal(by_hand.argmax(-1), codes)
    assert torch.allclose(guided_logits(c, u, scale), by_hand)


def test_the_plausibility_cut_keeps_codes_within_alpha_of_the_conditional_top_probability():
    cond = torch.log(torch.tensor([[0.5, 0.3, 0.04, 0.16], [0.97, 0.01, 0.01, 0.01]]))
    uncond = torch.log(torch.tensor([[0.1, 0.6, 0.001, 0.299], [0.25, 0.25, 0.25, 0.25]]))
    guided = guided_logits(cond, uncond, 5.0)
    assert guided[0].argmax() == 2  # plain guidance picks the tail code the twin finds still less likely
    cut = plausible(guided, cond, 0.1)  # kept: p >= 0.1 * p_max
    assert cut.isfinite().tolist() == [[True, True, False, True], [True, False, False, False]]
    assert torch.equal(cut[cut.isfinite()], guided[cut.isfinite()])
    assert torch.equal(plausible(guided, cond, 0.0), guided)  # 0: every code stays
    per_row = plausible(guided, cond, torch.tensor([[0.0], [0.1]]))  # the scheduler's per-slot α
    assert per_row[0].isfinite().all() and per_row[1].isfinite().sum() == 1


def test_guided_codes_with_the_plausibility_cut_follow_it_computed_by_hand(tiny):
    model, processor = tiny
    widen_weights(model)
    cond = processor.generation_prompt("a red circle")
    engine = GenerationEngine(model, processor)
    settings = GenerationSettings(temperature=0, cfg_scale=4.0, cfg_plausibility=0.5)
    codes = engine.generate([Request(cond, "image")], settings)[0].codes[0]
    with torch.no_grad():
        hidden = [
            model(*_with_codes(processor, s, codes[:-1].tolist())).last_hidden_state[0, len(s) - 1 :]
            for s in (cond, processor.unconditional(cond))
        ]
        c, u = (model.image_logits(h) for h in hidden)
    guided = u + 4.0 * (c - u)
    allowed = c.softmax(-1) >= 0.5 * c.softmax(-1).max(-1, keepdim=True).values
    assert torch.equal(guided.masked_fill(~allowed, float("-inf")).argmax(-1), codes)
    plain = engine.generate([Request(cond, "image")], GenerationSettings(temperature=0, cfg_scale=4.0))[0].codes[0]
    assert not torch.equal(codes, plain)  # the cut matters


def test_image_conditioned_generation_keeps_the_input_image_in_the_twin(tiny):
    model, processor = tiny
    cond = processor.generation_prompt("make it blue", images=[shape_image()])
    twin = processor.unconditional(cond, keep_images=True)
    assert len(twin.und_pixels) == 1 and len(twin) == len(cond)
    engine = GenerationEngine(model, processor)
    settings = GenerationSettings(temperature=0, cfg_scale=2.0)
    codes = engine.generate([Request(cond, "image")], settings)[0].codes[0]
    with torch.no_grad():
        logits = []
        for s in (cond, twin):
            ids, modality = _with_codes(processor, s, codes[:-1].tolist())
            pixels = torch.stack(s.und_pixels)
            hidden = model(ids, modality, pixel_values=pixels).last_hidden_state[0, len(s) - 1 :]
            logits.append(model.image_logits(hidden))
    assert torch.equal(guided_logits(*logits, 2.0).argmax(-1), codes)
    # the input image matters
    plain = engine.generate([Request(processor.generation_prompt("make it blue"), "image")], settings)[0].codes[0]
    assert not torch.equal(codes, plain)


def test_image_guidance_follows_the_instruct_pix2pix_formula_computed_by_hand(tiny):
    model, processor = tiny
    widen_weights(model)  # so that codes vary and each guidance term matters
    cond = processor.generation_prompt("make it blue", images=[shape_image()])
    twin, bare = processor.unconditional(cond, keep_images=True), processor.unconditional(cond)
    assert len(twin.und_pixels) == 1 and not bare.und_pixels
    engine = GenerationEngine(model, processor)
    settings = GenerationSettings(temperature=0, cfg_scale=2.0, image_cfg_scale=1.5)
    codes = engine.generate([Request(cond, "image")] * 2, settings)[0].codes[0]
    with torch.no_grad():
        c, u_image, u_bare = [], [], []
        for s, out in ((cond, c), (twin, u_image), (bare, u_bare)):
            ids, modality = _with_codes(processor, s, codes[:-1].tolist())
            pixels = torch.stack(s.und_pixels) if s.und_pixels else None
            out.append(model.image_logits(model(ids, modality, pixel_values=pixels).last_hidden_state[0, len(s) - 1 :]))
    by_hand = u_bare[0] + 1.5 * (u_image[0] - u_bare[0]) + 2.0 * (c[0] - u_image[0])
    assert torch.equal(by_hand.argmax(-1), codes)
    assert torch.allclose(
        image_guided_logits(c[0], u_image[0], u_bare[0], 2.0, 1.0), guided_logits(c[0], u_image[0], 2.0)
    )  # image scale 1: plain guidance
    plain = engine.generate([Request(cond, "image")], GenerationSettings(temperature=0, cfg_scale=2.0))[0].codes[0]
    assert not torch.equal(codes, plain)  # the image term matters


def test_image_guidance_needs_input_images_and_drawing_rows(tiny):
    model, processor = tiny
    engine = GenerationEngine(model, processor)
    text_only = Request(processor.generation_prompt("a red circle"), "image")
    plain, imaged = (
        engine.generate([text_only], GenerationSettings(temperature=0, cfg_scale=2.0, image_cfg_scale=s))
        for s in (1.0, 3.0)
    )
    assert torch.equal(plain[0].codes[0], imaged[0].codes[0])  # no input images: u_I = u∅, nothing changes
    edit = Request(processor.generation_prompt("make it blue", images=[shape_image()]), "image")
    chat = Request(processor.conversation([{"role": "user", "content": "hello"}]))
    with pytest.raises(SettingsError, match="image_cfg_scale"):
        engine.generate([edit, chat], GenerationSettings(image_cfg_scale=2.0))


def test_same_seed_same_output_different_seed_different_images(tiny):
    model, processor = tiny
    engine = GenerationEngine(model, processor)
    prompt = processor.generation_prompt("a red circle")
    run = lambda seed: torch.stack(
        [
            r.codes[0]
            for r in engine.generate([Request(prompt, "image")] * 2, GenerationSettings(seed=seed, temperature=1.0))
        ]
    )
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # parallel images of one prompt differ
    chat = processor.conversation([{"role": "user", "content": "hello"}])
    text = lambda seed: engine.generate([Request(chat)], GenerationSettings(seed=seed, max_new_tokens=12))[0].token_ids
    assert text(5) == text(5) and text(5) != text(6)


def test_stream_events_add_up_to_the_results(tiny):
    model, processor = tiny
    engine = GenerationEngine(model, processor)
    prompt = processor.generation_prompt("a red circle")
    events = list(engine.stream([Request(prompt, "image")] * 2, GenerationSettings(seed=0, preview_every=4)))
    n = processor.num_gen_tokens
    progress = [e for e in events if isinstance(e, ImageProgress)]
    assert len(progress) == 2 * n and progress[-1].done == n
    assert sum(e.preview is not None for e in progress) == 2 * (n // 4 - 1)
    done = [e for e in events if isinstance(e, ImageDone)]
    assert [e.row for e in done] == [0, 1] and done[0].image.size == (16, 16) and done[0].codes.shape == (n,)
    assert isinstance(events[-1], Done) and events[-1].results[1].images[0] is done[1].image

    chat = processor.conversation([{"role": "user", "content": "hi"}])
    events = list(engine.stream([Request(chat)], GenerationSettings(temperature=0, max_new_tokens=20)))
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert streamed == events[-1].results[0].text and streamed


def test_stop_strings_and_token_budget(tiny):
    model, processor = tiny
    engine = GenerationEngine(model, processor)
    chat = processor.conversation([{"role": "user", "content": "hello"}])
    free = engine.generate([Request(chat)], GenerationSettings(temperature=0, max_new_tokens=30))[0]
    assert free.finish_reason in ("length", "eos") and len(free.token_ids) <= 30
    stop = free.text[4:6]
    cut = engine.generate([Request(chat)], GenerationSettings(temperature=0, max_new_tokens=30, stop=[stop]))[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    short = engine.generate([Request(chat)], GenerationSettings(temperature=0, max_new_tokens=3))[0]
    assert short.token_ids == free.token_ids[:3] and short.finish_reason == "length"


def test_kv_cache_holds_exactly_prompt_plus_generated_tokens(tiny):
    model, processor = tiny
    text = model.config.text_config
    per_column = (
        text.num_hidden_layers * 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 4
    )
    engine = GenerationEngine(model, processor)
    prompt = processor.generation_prompt("a red circle")
    engine.generate([Request(prompt, "image")] * 3, GenerationSettings(seed=0))
    # 3 rows + 3 unconditional twins; prompt, then every code but the last is fed back
    assert engine.kv_cache_bytes == 6 * (len(prompt) + processor.num_gen_tokens - 1) * per_column
    chat = processor.conversation([{"role": "user", "content": "hello"}])
    engine.generate([Request(chat)], GenerationSettings(max_new_tokens=10))
    assert engine.kv_cache_bytes == (len(chat) + 10 - 1) * per_column
    assert engine.cache is None  # freed after the call


def _record_widths(engine):
    """Wrap the engine's decoder call to record the cache width (and check the mask's) of each step."""
    widths, body = [], engine._decoder.body

    def recording(*, attention_mask, **kwargs):
        cache = kwargs[engine._decoder.cache_name]
        if isinstance(cache, StaticCache):  # decode steps (prefills use a DynamicCache)
            widths.append(cache.layers[0].keys.shape[2])
            assert attention_mask.shape[-1] == widths[-1]
        return body(attention_mask=attention_mask, **kwargs)

    engine._decoder.body = recording
    return widths


def test_attention_reads_only_the_filled_part_of_the_cache(tiny, monkeypatch):
    model, processor = tiny
    draw = Request(processor.generation_prompt("a red circle"), "image")
    chat = Request(processor.conversation([{"role": "user", "content": "hello"}]))
    settings = GenerationSettings(temperature=0, cfg_scale=3.0, max_new_tokens=40, max_images=1)
    monkeypatch.setattr(engine_module, "WIDTH_STEP", 10**6)  # every step reads the whole cache
    whole = GenerationEngine(model, processor).generate([draw, chat], settings)
    monkeypatch.setattr(engine_module, "WIDTH_STEP", 8)
    engine = GenerationEngine(model, processor)
    widths = _record_widths(engine)
    cut = engine.generate([draw, chat], settings)
    assert [r.token_ids for r in cut] == [r.token_ids for r in whole]
    length = len(processor.unconditional(draw.prompt))  # the longest prompt sets the first column
    columns = length + 40 + processor.num_gen_tokens  # the chat row's budget: text and one image
    expected = [min(columns, -(-(length + step + 1) // 8) * 8) for step in range(len(widths))]
    assert widths == expected and widths[0] < columns


def test_sampling_filters():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, 0.0), logits.argmax(-1))
    assert torch.equal(sample(logits, 1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(sample(logits, 1.0, top_p=1e-6), logits.argmax(-1))
    kept = filter_top_k_top_p(logits, 5, None).isfinite().sum(-1)
    assert (kept == 5).all()
    probs = logits.softmax(-1)
    nucleus = filter_top_k_top_p(logits, None, 0.5).isfinite()
    mass = (probs * nucleus).sum(-1)
    assert (mass >= 0.5).all() and (mass - (probs * nucleus).max(-1).values < 0.5 + 1e-6).all()
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(torch.log(torch.tensor([[0.2, 0.8]])), 1.0, generator=g) for _ in range(2000)])
    assert 0.75 < draws.float().mean() < 0.85


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-0.1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(cfg_scale=-1.0),
        dict(top_k=0),
        dict(max_new_tokens=0),
        dict(repetition_penalty=0.0),
        dict(max_images=-1),
        dict(temperature=float("nan")),
        dict(image_cfg_scale=-0.5),
        dict(cfg_plausibility=-0.1),
        dict(cfg_plausibility=1.5),
        dict(cfg_plausibility=float("nan")),
        # past float32: logits / 1e-38 and u + 1e300·(c − u) overflow into NaN codes
        dict(temperature=1e-38),
        dict(temperature=1e300),
        dict(image_temperature=-1.0),
        dict(image_temperature=float("nan")),
        dict(image_temperature="hot"),
        dict(cfg_scale=1e300),
        dict(seed=2**64),
        dict(seed=-1),
        dict(seed=True),
        dict(top_k=True),
        dict(max_new_tokens=True),
        dict(stop=5),
    ],
)
def test_bad_settings_raise_a_settings_error(bad):
    name = next(iter(bad))
    with pytest.raises(SettingsError, match=name):
        GenerationSettings(**bad)


def test_numpy_scalars_are_numbers():
    np = pytest.importorskip("numpy")
    settings = GenerationSettings(
        temperature=np.float32(0.5),
        top_k=np.int64(3),
        max_new_tokens=np.int32(7),
        seed=np.int64(3),
        cfg_scale=np.float64(2.0),
    )
    assert (settings.temperature, settings.top_k, settings.max_new_tokens, settings.seed) == (0.5, 3, 7, 3)
    assert type(settings.seed) is int and check_num_images(np.int64(2)) == 2


def test_a_new_call_takes_over_the_engine_and_the_interrupted_stream_says_so(tiny):
    model, processor = tiny
    engine = GenerationEngine(model, processor)
    settings = GenerationSettings(temperature=0, max_new_tokens=12, ignore_eos=True)
    first = Request(processor.conversation([{"role": "user", "content": "hello"}]))
    second = Request(processor.conversation([{"role": "user", "content": "a longer question, about squares"}]))
    alone = engine.generate([second], settings)[0].token_ids
    interrupted = engine.stream([first], settings)
    next(interrupted)
    assert engine.generate([second], settings)[0].token_ids == alone  # the same as on a fresh engine
    with pytest.raises(GenerationError, match="interrupted by a later call"):
        list(interrupted)  # not the other call's tokens, not a crash deep inside


def test_num_images_cap_and_prompt_errors(tiny):
    model, processor = tiny
    for n in (0, MAX_IMAGES_PER_PROMPT + 1):
        with pytest.raises(SettingsError, match=f"\\[1, {MAX_IMAGES_PER_PROMPT}\\]"):
            check_num_images(n)
    engine = GenerationEngine(model, processor)
    too_long = processor.conversation([{"role": "user", "content": "x" * 1100}])
    with pytest.raises(PromptError, match="context holds 1024"):
        engine.generate([Request(too_long)], GenerationSettings())
    with pytest.raises(PromptError):
        engine.generate([], GenerationSettings())


def test_repetition_penalty_changes_greedy_text():
    model, processor = tiny_model(seed=1)
    engine = GenerationEngine(model, processor)
    chat = processor.conversation([{"role": "user", "content": "hello"}])
    plain = engine.generate([Request(chat)], GenerationSettings(temperature=0, max_new_tokens=30))[0].token_ids
    penal = engine.generate(
        [Request(chat)], GenerationSettings(temperature=0, max_new_tokens=30, repetition_penalty=5.0)
    )[0].token_ids
    assert plain != penal
    assert len(set(penal)) >= len(set(plain))


@pytest.mark.slow
def test_compiled_decode_step_matches_eager_and_is_reused(tiny):
    model, processor = tiny
    prompt = processor.generation_prompt("a red circle")
    settings = GenerationSettings(temperature=0, cfg_scale=5.0)
    eager = GenerationEngine(model, processor).generate([Request(prompt, "image")] * 2, settings)
    compiled = GenerationEngine(model, processor, compile=True)
    for _ in range(2):  # the second call reuses the cache (and, on CUDA, the captured graph)
        out = compiled.generate([Request(prompt, "image")] * 2, settings)
        assert all(torch.equal(a.codes[0], b.codes[0]) for a, b in zip(eager, out))
    seeded = GenerationSettings(temperature=1.0, cfg_scale=5.0, seed=3)
    assert torch.equal(
        compiled.generate([Request(prompt, "image")] * 2, seeded)[1].codes[0],
        GenerationEngine(model, processor).generate([Request(prompt, "image")] * 2, seeded)[1].codes[0],
    )
    chat = processor.conversation([{"role": "user", "content": "hello"}])
    text = GenerationSettings(temperature=0, max_new_tokens=10)
    assert (
        compiled.generate([Request(chat)], text)[0].token_ids
        == GenerationEngine(model, processor).generate([Request(chat)], text)[0].token_ids
    )


@pytest.mark.slow
def test_compiled_steps_compile_once_for_any_batch_length_width_or_setting(tiny, monkeypatch):
    from torch._dynamo.utils import counters

    model, processor = tiny
    monkeypatch.setattr(engine_module, "WIDTH_STEP", 8)  # many widths within each call
    compiled, eager = GenerationEngine(model, processor, compile=True), GenerationEngine(model, processor)

    def chat(text, rows, budget):
        requests = [Request(processor.conversation([{"role": "user", "content": text}]))] * rows
        settings = GenerationSettings(temperature=0, max_new_tokens=budget, ignore_eos=True)
        assert [r.token_ids for r in compiled.generate(requests, settings)] == [
            r.token_ids for r in eager.generate(requests, settings)
        ]

    def draw(text, rows, cfg_scale, temperature, seed, image_cfg_scale=1.0):
        images = [shape_image()] if image_cfg_scale != 1.0 else []  # an edit, with image guidance
        requests = [Request(processor.generation_prompt(text, images), "image")] * rows
        settings = GenerationSettings(
            temperature=temperature, cfg_scale=cfg_scale, seed=seed, image_cfg_scale=image_cfg_scale
        )
        assert all(
            torch.equal(a.codes[0], b.codes[0])
            for a, b in zip(compiled.generate(requests, settings), eager.generate(requests, settings))
        )

    chat("hello", 2, 20)
    draw("a red circle", 2, 3.0, 1.0, 0)
    draw("make it blue", 2, 3.0, 1.0, 0, image_cfg_scale=1.5)
    graphs = counters["stats"]["unique_graphs"]
    chat("a much longer question about circles", 3, 45)  # other rows, cache length and widths
    draw("a blue square on the left of a circle", 3, 5.0, 0.7, 1)  # other rows, length, guidance, temperature
    draw("a red circle", 4, 2.0, 1.3, 2)
    draw("move it to the left", 3, 2.0, 0.8, 3, image_cfg_scale=2.5)
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation
    draw("a red circle", 1, 3.0, 1.0, 4)  # one guided row: halves of one row, a graph of its own
    chat("hello", 1, 10)


def test_a_drawing_row_and_a_chat_row_share_a_batch(tiny):
    model, processor = tiny
    engine = GenerationEngine(model, processor)
    draw = Request(processor.generation_prompt("a red circle"), "image")
    chat = Request(processor.conversation([{"role": "user", "content": "hello there, how are you?"}]))
    settings = GenerationSettings(temperature=0, max_new_tokens=25, cfg_scale=3.0)
    together = engine.generate([draw, chat], settings)
    assert torch.equal(together[0].codes[0], engine.generate([draw], settings)[0].codes[0])
    assert together[0].finish_reason == "image" and not together[1].codes
    assert together[1].token_ids == engine.generate([chat], settings)[0].token_ids


@pytest.mark.parametrize(
    "stop, text, reason", [((), "A red circle.", "eos"), (("<image_placeholder>",), "A red", "stop")]
)
def test_special_tokens_the_text_head_samples_are_left_out_of_the_text(tiny, monkeypatch, stop, text, reason):
    """Pad or image tags sampled as text are not words: left out as skip_special_tokens does (DeepSeek,
    transformers), while stop strings still see them (a special token can be the stop)."""
    model, processor = tiny
    encode = lambda words: processor.tokenizer.encode(words, add_special_tokens=False)
    script = iter(
        encode("A red") + [processor.pad_id, processor.image_token_id] + encode(" circle.") + [processor.eos_id]
    )
    monkeypatch.setattr(engine_module, "sample", lambda logits, *args, **kwargs: torch.tensor([next(script)]))
    prompt = processor.conversation([{"role": "user", "content": "hi"}])
    events = list(
        GenerationEngine(model, processor).stream([Request(prompt)], GenerationSettings(max_new_tokens=32, stop=stop))
    )
    result = events[-1].results[0]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == result.text == text
    assert result.finish_reason == reason
    assert processor.pad_id in result.token_ids  # the ids stay as sampled
