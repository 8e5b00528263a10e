"""The scheduler: concurrent calls share decode steps over one KV cache, each call's output is the
same as alone (seeded sampling included), cancelled calls free their slots, errors stay with their call."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from janus_like import JanusLikePipeline, PromptError, SettingsError
from janus_like.generation import Done, GenerationSettings, ImageProgress, Request, TextDelta
from janus_like.generation.scheduler import _GOLDEN, Scheduler, _mix, _stop_all, exponential_noise, row_seed
from janus_like.testing import shape_image, tiny_model, widen_weights


@pytest.fixture(scope="module")
def pipe():
    model, processor = tiny_model(seed=0)
    return JanusLikePipeline(widen_weights(model), processor, max_batch=32)  # wide: rows draw different codes


def _calls(picture):
    """16 seeded calls of every kind, sampled (temperature 1) and with per-call settings."""
    calls = []
    for i in range(4):
        calls.append(
            lambda p, i=i: p.chat(
                f"question {i}?",
                temperature=1.0,
                seed=i,
                max_new_tokens=10 + i,
                top_k=None if i % 2 else 50,
                repetition_penalty=1.0 + 0.2 * i,
            )
        )
        calls.append(
            lambda p, i=i: p.generate_images(
                f"a red circle {i}",
                num_images=1,
                cfg_scale=3.0 + i,
                temperature=1.0,
                seed=100 + i,
                top_p=0.9 if i % 2 else None,
            )
        )
        calls.append(
            lambda p, i=i: p.generate_images(
                "make it blue",
                images=[picture],
                num_images=1,
                seed=200 + i,
                temperature=1.0,
                image_cfg_scale=1.0 + i % 2,
            )
        )
        calls.append(
            lambda p, i=i: p.interleave(
                f"tell a story {i}", seed=300 + i, max_new_tokens=8 + i, max_images=1, temperature=1.0
            )
        )
    return calls


def _all_at_once(calls, pipe) -> list:
    """Every call from a thread of its own, all at once; their outputs in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call, pipe) for call in calls]]


def _comparable(output):
    """Strings as they are, images as bytes."""
    items = output if isinstance(output, list) else [output]
    return [item if isinstance(item, str) else item.tobytes() for item in items]


def test_seeded_calls_give_the_same_output_alone_and_among_15_concurrent_calls(pipe, monkeypatch):
    calls = _calls(shape_image())
    alone = [_comparable(call(pipe)) for call in calls]
    scheduler, widest, step = pipe.scheduler, [], pipe.scheduler._step
    monkeypatch.setattr(scheduler, "_step", lambda: (widest.append(len({r.call for r in scheduler._rows})), step()))
    together = [_comparable(output) for output in _all_at_once(calls, pipe)]
    assert together == alone
    assert max(widest) >= 8  # the calls did share decode steps
    assert len({str(a) for a in alone}) == len(alone)  # the seeds and prompts do make each call different


def test_each_row_samples_from_the_same_numbers_alone_and_among_15_concurrent_calls(pipe, monkeypatch):
    """Bit for bit, not only the same tokens: a near-tie must not flip because of who shares the step
    (CPU kernels sum 2 rows in another order than 32 unless the step's rows are rounded up)."""
    seen: dict[tuple[int, int], list[torch.Tensor]] = {}
    sample = Scheduler._sample

    def spy(self, rows, width):
        for row in rows:
            seen.setdefault((row.call.seed, row.index), []).append(self._hidden[row.slot].clone())
        return sample(self, rows, width)

    monkeypatch.setattr(Scheduler, "_sample", spy)
    calls = _calls(shape_image())
    for call in calls:
        call(pipe)
    alone, seen = seen, {}
    _all_at_once(calls, pipe)
    assert seen.keys() == alone.keys() and len(alone) == len(calls)
    for key, states in alone.items():
        assert len(states) == len(seen[key]) and all(map(torch.equal, states, seen[key])), key


def test_on_the_default_model_interleaved_images_and_edits_are_the_same_alone_and_concurrent():
    default = JanusLikePipeline.from_pretrained(device="cpu", dtype="float32", max_batch=32)
    picture = shape_image()
    calls = [
        lambda p: p.interleave("Draw a red circle, then describe it.", seed=0, max_new_tokens=40, max_images=1),
        lambda p: p.interleave("Draw a small blue square in the center.", seed=2, max_new_tokens=40, max_images=1),
        lambda p: p.generate_images("a blue square", num_images=2, seed=3, temperature=1.0),
        lambda p: p.generate_images("make it blue", images=[picture], num_images=1, seed=4, image_cfg_scale=2.0),
        lambda p: p.chat("What is this?", images=[picture], temperature=1.0, seed=5, max_new_tokens=20),
    ]
    alone = [_comparable(call(default)) for call in calls]
    assert all(bytes in map(type, output) for output in alone[:2])  # the interleaved answers drew images
    assert [_comparable(output) for output in _all_at_once(calls, default)] == alone


def test_greedy_outputs_equal_the_static_batch_engines(pipe):
    """The engine's greedy outputs match transformers' Janus (test_generation_parity); so do these."""
    p, picture = pipe.processor, shape_image()
    chat = p.conversation([{"role": "user", "content": "hello there"}])
    cases = [
        ([Request(p.generation_prompt("a red circle"), "image")] * 2, dict(cfg_scale=3.0)),
        ([Request(p.generation_prompt("a red circle"), "image")], dict(cfg_scale=3.0, cfg_plausibility=0.5)),
        ([Request(p.generation_prompt("make it blue", [picture]), "image")], dict(cfg_scale=3.0, image_cfg_scale=2.0)),
        ([Request(chat)], dict(max_new_tokens=20, repetition_penalty=1.3, stop=["zz"])),
        ([Request(chat)], dict(max_new_tokens=20, max_images=1, cfg_scale=2.0, ignore_eos=True)),
    ]
    for requests, settings in cases:
        settings = GenerationSettings(temperature=0, **settings)
        engine = pipe.engine.generate(requests, settings)
        scheduler = list(pipe.scheduler.submit(requests, settings))[-1].results
        assert [(r.token_ids, r.text, [c.tolist() for c in r.codes], r.finish_reason) for r in scheduler] == [
            (r.token_ids, r.text, [c.tolist() for c in r.codes], r.finish_reason) for r in engine
        ]


def test_calls_admitted_while_others_decode_equal_greedy_outputs_alone(pipe):
    first = dict(prompt="a blue square", num_images=2, cfg_scale=3.0, temperature=0)
    later = [
        dict(prompt="What is this?", mode="chat", max_new_tokens=12),
        dict(prompt="a red circle", mode="images", num_images=1, cfg_scale=2.0, temperature=0),
    ]
    alone = [_events_result(pipe.stream(**kw)) for kw in [dict(first, mode="images"), *later]]
    stream = pipe.stream(**first, mode="images")
    progress = [next(stream) for _ in range(4)]  # the first call is drawing
    assert all(isinstance(e, ImageProgress) for e in progress)
    steps = pipe.scheduler.steps
    streams = [pipe.stream(**kw) for kw in later]
    together = [_events_result(s) for s in [stream, *streams]]
    assert steps > 0 and together == alone


def _events_result(stream):
    for event in stream:
        if isinstance(event, Done):
            return [(r.token_ids, [im.tobytes() for im in r.images], r.text) for r in event.results]


def test_a_cancelled_stream_frees_its_slots_within_one_step(pipe, monkeypatch):
    scheduler, free_at_step, step = pipe.scheduler, {}, pipe.scheduler._step
    monkeypatch.setattr(
        scheduler, "_step", lambda: (free_at_step.setdefault(scheduler.steps, scheduler.free_slots), step())
    )
    keep = pipe.stream("Keep talking.", mode="chat", max_new_tokens=300, ignore_eos=True)  # 1 slot
    cancelled = pipe.stream("A long story with a picture.", mode="interleave", max_new_tokens=200, ignore_eos=True)
    next(cancelled)
    assert scheduler.free_slots == scheduler.max_batch - 3  # an interleaved row reserves its guidance twin
    cancelled.close()
    closed_at = scheduler.steps  # this step may have been under way already; the next one starts after the close
    _wait(lambda: closed_at + 1 in free_at_step)
    assert free_at_step[closed_at + 1] == scheduler.max_batch - 1
    dropped = pipe.stream("Another long story.", mode="interleave", max_new_tokens=200, ignore_eos=True)
    next(dropped)
    del dropped  # garbage collection cancels too
    _wait(lambda: scheduler.free_slots == scheduler.max_batch - 1)
    assert isinstance(list(keep)[-1], Done)
    _wait(lambda: scheduler.free_slots == scheduler.max_batch)


def _wait(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def test_the_kv_cache_is_allocated_once_across_many_calls(pipe):
    pipe.chat("hello", max_new_tokens=2)
    pointers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in pipe.scheduler.cache.layers]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: pipe.generate_images(f"shape {i}", num_images=3, seed=i), range(12)))
    pipe.interleave("a story", max_new_tokens=6, seed=1)
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in pipe.scheduler.cache.layers] == pointers
    assert pipe.scheduler.free_slots == pipe.scheduler.max_batch


def test_calls_beyond_max_batch_wait_for_slots_and_rows_that_never_fit_are_refused():
    model, processor = tiny_model(seed=0)
    small = JanusLikePipeline(model, processor, max_batch=2)
    images = small.generate_images("a red circle", num_images=5, cfg_scale=3.0, temperature=0)  # 10 rows in waves
    assert [im.tobytes() for im in images] == [
        small.generate_images("a red circle", num_images=1, cfg_scale=3.0, temperature=0)[0].tobytes()
    ] * 5
    with pytest.raises(SettingsError, match=r"needs 3 cache slots .* max_batch=2"):
        small.stream("make it blue", mode="images", images=[shape_image()], image_cfg_scale=2.0)
    for bad in (0, -1, 1.5, True, "8", 10**6):
        with pytest.raises(SettingsError, match=r"max_batch=.* must be an integer in \[1, 4096\]"):
            JanusLikePipeline(model, processor, max_batch=bad)
    with pytest.raises(SettingsError, match="max_batch"):
        JanusLikePipeline.from_pretrained("/nonexistent", max_batch=0)  # refused before loading


def test_a_row_that_cannot_fit_the_cache_columns_is_refused_at_submission():
    model, processor = tiny_model(seed=0)
    scheduler = Scheduler(model, processor, max_batch=4, cache_length=64)
    prompt = processor.conversation([{"role": "user", "content": "hi"}])
    with pytest.raises(PromptError, match="the scheduler's cache_length holds 64; .* lower max_new_tokens"):
        scheduler.submit([Request(prompt)], GenerationSettings(max_new_tokens=64))
    done = list(scheduler.submit([Request(prompt)], GenerationSettings(max_new_tokens=64 - len(prompt))))[-1]
    assert len(done.results[0].token_ids) <= 64 - len(prompt)
    assert [tuple(layer.keys.shape[::2]) for layer in scheduler.cache.layers] == [(4, 64)] * len(scheduler.cache.layers)


def test_an_error_in_a_step_reaches_its_callers_and_the_scheduler_keeps_serving(pipe, monkeypatch):
    def broken(hidden):
        raise RuntimeError("the image head broke")

    chat = pipe.stream("hello", mode="chat", max_new_tokens=30, ignore_eos=True)
    with monkeypatch.context() as patch:
        patch.setattr(pipe.model, "image_logits", broken)
        with pytest.raises(RuntimeError, match="image head broke"):
            pipe.generate_images("a red circle", num_images=1)
    with pytest.raises(RuntimeError, match="image head broke"):  # the chat row shared the failing step
        list(chat)
    assert len(pipe.generate_images("a red circle", num_images=1, seed=0)) == 1
    assert pipe.scheduler.free_slots == pipe.scheduler.max_batch


def test_unseeded_calls_draw_a_seed_and_report_it(pipe):
    stream = pipe.stream("a red circle", mode="images", num_images=2, temperature=1.0)
    done = list(stream)[-1]
    seed = done.results[0].seed
    assert seed is not None and {r.seed for r in done.results} == {seed} and stream.seed == seed
    again = _events_result(pipe.stream("a red circle", mode="images", num_images=2, temperature=1.0, seed=seed))
    assert again == [(r.token_ids, [im.tobytes() for im in r.images], r.text) for r in done.results]


def test_noise_depends_on_seed_step_and_index_only():
    index_hash = _mix((torch.arange(1000) + 1) * _GOLDEN)
    seeds, steps = torch.tensor([row_seed(7, 0), row_seed(7, 1), row_seed(7, 0)]), torch.tensor([3, 3, 4])
    noise = exponential_noise(seeds, steps, index_hash)
    alone = exponential_noise(seeds[:1], steps[:1], index_hash)
    assert torch.equal(noise[0], alone[0])  # the batch around a row changes nothing
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    assert abs(noise.mean().item() - 1.0) < 0.1 and noise.min() > 0  # Exp(1)


def test_the_scheduler_thread_ends_when_idle_and_a_new_call_starts_it(pipe, monkeypatch):
    monkeypatch.setattr("janus_like.generation.scheduler.IDLE_SECONDS", 0.01)
    pipe.chat("hello", max_new_tokens=2)
    _wait(lambda: pipe.scheduler._thread is None)  # an unused pipeline keeps no thread (nor itself) alive
    assert pipe.chat("hello", max_new_tokens=2) == pipe.chat("hello", max_new_tokens=2)


def test_exit_waits_for_a_scheduler_thread_that_is_ending(pipe, monkeypatch):
    """At exit, a loop thread that has left its loop may still hold the last reference to its scheduler
    and free its tensors as it ends; a tensor freed during interpreter shutdown aborts the process
    (seen: `terminate called without an active exception` after pytest had finished). So the exit
    handler waits for every loop thread, not only those of the schedulers it can still reach."""
    pipe.scheduler.stop()  # a loop thread of an earlier test ends first: the next call starts a patched one
    release, ending = threading.Event(), []
    loop = Scheduler._run

    def loop_then_linger(self):
        ending.append(threading.current_thread())
        loop(self)
        release.wait(10)  # out of the loop, not yet ended

    monkeypatch.setattr(Scheduler, "_run", loop_then_linger)
    monkeypatch.setattr("janus_like.generation.scheduler.IDLE_SECONDS", 0.01)
    pipe.chat("hello", max_new_tokens=2)
    _wait(lambda: pipe.scheduler._thread is None)  # left its loop
    at_exit = threading.Thread(target=_stop_all)
    at_exit.start()
    at_exit.join(0.5)
    assert at_exit.is_alive() and ending[0].is_alive(), "the exit handler returned before the thread ended"
    release.set()
    at_exit.join(10)
    assert not at_exit.is_alive() and not ending[0].is_alive()
    assert pipe.chat("hello", max_new_tokens=2)  # a later call starts a new loop thread


def test_previews_and_progress_come_from_drawing_steps_that_read_nothing_back(pipe):
    plain = list(pipe.stream("a red circle", mode="images", num_images=2, seed=3, temperature=1.0))
    previewed = list(pipe.stream("a red circle", mode="images", num_images=2, seed=3, temperature=1.0, preview_every=4))
    n = pipe.processor.num_gen_tokens
    for events in (plain, previewed):
        assert [(e.row, e.done) for e in events if isinstance(e, ImageProgress)] == [
            (row, done) for done in range(1, n + 1) for row in (0, 1)
        ]
    previews = [e.done for e in previewed if isinstance(e, ImageProgress) and e.preview is not None]
    assert previews == [done for done in range(4, n, 4) for _ in (0, 1)]
    assert [r.token_ids for r in previewed[-1].results] == [r.token_ids for r in plain[-1].results]


def test_text_streams_through_the_scheduler_in_deltas(pipe):
    events = list(pipe.stream("hello", mode="chat", max_new_tokens=12))
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert deltas == events[-1].results[0].text


def test_a_slot_freed_below_a_drawing_row_is_fed_a_text_token_the_model_has():
    """In a drawing step nothing is read back: a free slot below a row still drawing used to be fed
    the image head's code for that slot as a text token, which is past the text vocabulary when the
    codebook is larger (an IndexError that failed every call in the step). Outputs stay as alone."""
    model, processor = tiny_model(seed=0, vq_config={"codebook_size": 4096})
    vocab = model.get_input_embeddings().num_embeddings
    pipe = JanusLikePipeline(widen_weights(model), processor, max_batch=4)
    draw = dict(mode="images", num_images=1, cfg_scale=1.0, temperature=0)
    alone = [_events_result(pipe.stream(prompt, **draw)) for prompt in ("a red circle", "a blue square")]
    fed_text, holes = [], []
    embed = pipe.scheduler._embed

    def checked(tokens, is_code, any_code):
        fed_text.extend(tokens[~is_code].tolist())
        holes.append(len(pipe.scheduler._rows) < len(tokens))
        return embed(tokens, is_code, any_code)

    pipe.scheduler._embed = checked
    first = pipe.stream("a red circle", **draw)
    next(first), next(first)  # drawing in slot 0
    second = pipe.stream("a blue square", **draw)  # slot 1: draws on after the first leaves slot 0
    assert [_events_result(first), _events_result(second)] == alone
    assert any(holes) and max(fed_text) < vocab
