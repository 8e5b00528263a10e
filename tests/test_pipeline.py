"""JanusLikePipeline (docs/ARCHITECTURE.md §4): loading, the one-call API, and clear errors."""

import threading

import pytest
import torch
from PIL import Image

from janus_like import JanusLikePipeline, ModelNotAvailableError, PromptError, SettingsError
from janus_like.generation import Done, ImageProgress
from janus_like.testing import shape_image, widen_weights, write_image


@pytest.fixture
def saved(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_from_pretrained_without_a_path_says_when_the_default_model_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("janus_like.checkpoint.DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(ModelNotAvailableError, match="model.safetensors"):
        JanusLikePipeline.from_pretrained()


def test_from_pretrained_generate_images_chat_interleave(saved, tmp_path):
    pipe = JanusLikePipeline.from_pretrained(saved, device="cpu", dtype="float32")
    images = pipe.generate_images("a red circle on the left", num_images=3, cfg_scale=5.0, seed=0)
    assert len(images) == 3 and all(isinstance(im, Image.Image) and im.size == (16, 16) for im in images)
    again = pipe.generate_images("a red circle on the left", num_images=3, cfg_scale=5.0, seed=0)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in again]
    path = write_image(tmp_path / "in.png", shape_image())
    edited = pipe.generate_images("make the circle blue", images=[path], num_images=2, seed=0)
    assert len(edited) == 2
    answer = pipe.chat("What is in this image?", images=[path], max_new_tokens=8)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": str(path)}, {"type": "text", "text": "What is in this image?"}],
        }
    ]
    assert pipe.chat(messages, max_new_tokens=8) == answer
    parts = pipe.interleave("Draw a red circle, then describe it.", seed=0, max_new_tokens=8)
    assert parts and all(isinstance(p, (str, Image.Image)) for p in parts)
    events = list(pipe.stream("a red circle", mode="images", num_images=1, seed=0))
    assert isinstance(events[-1], Done) and any(isinstance(e, ImageProgress) for e in events)


def test_a_list_of_prompts_is_drawn_in_one_batch_like_each_alone(tiny):
    model, processor = tiny
    pipe = JanusLikePipeline(widen_weights(model), processor)  # so that prompts draw different codes
    prompts = ["a red circle", "a blue square on the right of it"]  # different lengths: left padding
    batch = pipe.generate_images(prompts, num_images=2, temperature=0, cfg_scale=3.0)
    assert [len(images) for images in pipe.generate_images(prompts, num_images=None)] == [4, 4]  # the default
    alone = [pipe.generate_images(p, num_images=2, temperature=0, cfg_scale=3.0) for p in prompts]
    assert [[im.tobytes() for im in ims] for ims in batch] == [[im.tobytes() for im in ims] for ims in alone]
    assert batch[0][0].tobytes() != batch[1][0].tobytes()


def test_bfloat16_runs_on_cpu(saved):
    pipe = JanusLikePipeline.from_pretrained(saved, device="cpu", dtype=torch.bfloat16)
    assert pipe.model.dtype == torch.bfloat16
    assert len(pipe.generate_images("a red circle", num_images=1, seed=0)) == 1


@pytest.mark.parametrize("native", [True, False])
def test_half_weights_on_a_cpu_without_their_matmul_warn(saved, monkeypatch, recwarn, native):
    """On an AVX2-only CPU a bf16 decode matmul took 33 ms against 0.9 in float32 (janus_like/hardware.py)."""
    from janus_like import hardware

    monkeypatch.setattr(hardware, "cpu_multiplies", lambda dtype: native or dtype == torch.float32)
    JanusLikePipeline.from_pretrained(saved, device="cpu")  # float32: the CPU default
    assert not [w for w in recwarn if "matmul" in str(w.message)]
    JanusLikePipeline.from_pretrained(saved, device="cpu", dtype="bfloat16")
    warned = [str(w.message) for w in recwarn if "matmul" in str(w.message)]
    assert (warned and "dtype='float32'" in warned[0]) if not native else not warned


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda p: p.generate_images("x", num_images=0), SettingsError, "num_images"),
        (lambda p: p.generate_images("x", num_images=10_000), SettingsError, "num_images"),
        (lambda p: p.generate_images(["x"] * 40, num_images=2), SettingsError, r"\[1, 1\]"),
        (lambda p: p.generate_images([]), SettingsError, "0 prompts"),
        (lambda p: p.generate_images(["x", " "]), PromptError, "empty"),
        (lambda p: p.generate_images("x", cfg_scale=-1), SettingsError, "cfg_scale"),
        (lambda p: p.generate_images("x", temperature=-1), SettingsError, "temperature"),
        (lambda p: p.generate_images("x", top_p=1.5), SettingsError, "top_p"),
        (lambda p: p.generate_images("   "), PromptError, "empty"),
        (lambda p: p.chat(""), PromptError, "empty"),
        (lambda p: p.chat([]), PromptError, "non-empty"),
        (lambda p: p.chat("hello", system_prompt=5), PromptError, "system_prompt must be a string"),
        (lambda p: p.generate_images(None), PromptError, "must be a string, got NoneType"),
        (lambda p: p.generate_images(b"a red circle"), PromptError, "must be a string, got bytes"),
        (lambda p: p.generate_images("x" * 10**7), PromptError, "characters"),  # refused before tokenising
        (lambda p: p.chat("x" * 2000), PromptError, "context"),
        (lambda p: p.generate_images("x" * 2000), PromptError, "context"),
        (lambda p: p.stream("x", mode="video"), SettingsError, "mode"),
        (
            lambda p: p.stream("x", temprature=0.5),
            SettingsError,
            "unknown setting 'temprature'; accepted: max_new_tokens",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(tiny, call, error, words):
    pipe = JanusLikePipeline(*tiny)
    with pytest.raises(error, match=words):
        out = call(pipe)
        list(out) if not isinstance(out, (list, str)) else out


def test_chat_stops_at_the_next_user_turn_also_when_given_stops(tiny, monkeypatch):
    pipe = JanusLikePipeline(*tiny)
    stops, submit = [], pipe.scheduler.submit

    def recording(requests, settings):
        stops.append(settings.stop)
        return submit(requests, settings)

    monkeypatch.setattr(pipe.scheduler, "submit", recording)
    for stop in (None, ["."], "."):
        pipe.chat("hello", max_new_tokens=2, stop=stop)
    header = pipe.processor.config.user_role + ":"
    assert stops == [(header,), (".", header), (".", header)]


def test_compiled_calls_run_one_at_a_time_on_the_engine(tiny):
    """compile=True routes calls to the engine (its compiled step serves one static batch): calls
    from two threads each get their own whole answer, equal to the scheduler's greedy one, and a
    stream dropped half-read lets the next call run."""
    model, processor = tiny
    pipe = JanusLikePipeline(model, processor)
    expected = pipe.generate_images("a red circle", num_images=1, temperature=0, cfg_scale=1.0)[0]
    pipe.compile = True  # the routing under test; compiling itself is the slow tests' business
    pipe.scheduler.submit = lambda *args: pytest.fail("a compiled pipeline's calls go to the engine")
    results, errors = {}, []

    def draw(name):
        try:
            results[name] = pipe.generate_images("a red circle", num_images=1, temperature=0, cfg_scale=1.0)[0]
        except Exception as e:  # noqa: BLE001 - any error fails the test below
            errors.append(e)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 2
    assert all(list(image.getdata()) == list(expected.getdata()) for image in results.values())
    events = pipe.stream("a red circle", mode="images", num_images=1, temperature=0)
    next(events)
    del events  # dropped mid-call: the engine is free again
    assert pipe.chat("hi", max_new_tokens=2) is not None
