"""The Gradio demo (`janus-like demo`): handlers on a tiny model, user errors shown in the UI, and a
launched server that answers on loopback, refuses arbitrary files and oversized uploads."""

import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from janus_like import JanusLikePipeline, demo
from janus_like.cli import main
from janus_like.errors import PromptError
from janus_like.generation import ImageProgress
from janus_like.generation.settings import MAX_IMAGES_PER_PROMPT, MAX_INTERLEAVED_IMAGES
from janus_like.testing import shape_image, tiny_model, write_image


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """The tiny model saved to a temp dir and loaded the way `janus-like demo --model DIR` loads it."""
    path = tmp_path_factory.mktemp("model")
    model, processor = tiny_model(seed=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return JanusLikePipeline.from_pretrained(path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def app(pipe):
    return demo.build_demo(pipe)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    return str(write_image(tmp_path_factory.mktemp("img") / "in.png", shape_image()))


def _labels(app, kind) -> dict:
    return {c.label: c for c in app.blocks.values() if isinstance(c, kind)}


def test_build_demo_has_four_tabs_bounded_sliders_and_a_bounded_queue(app, pipe):
    assert list(_labels(app, gr.Tab)) == ["Text → image", "Chat", "Interleaved", "Image edit"]
    sliders = [c for c in app.blocks.values() if isinstance(c, gr.Slider)]
    context = pipe.processor.config.text_config.max_position_embeddings
    assert {s.maximum for s in sliders if s.label == "number of images"} == {MAX_IMAGES_PER_PROMPT}
    assert {s.maximum for s in sliders if s.label == "max images"} == {MAX_INTERLEAVED_IMAGES}
    (most,) = {s.maximum for s in sliders if s.label == "max new tokens"}
    assert most <= min(demo.MAX_NEW_TOKENS, context)
    # the slider's top leaves room for a question: a one-character chat fits it, one token more does not
    next(iter(pipe.stream("?", mode="chat", max_new_tokens=int(most))))
    with pytest.raises(PromptError, match="lower max_new_tokens"):
        next(iter(pipe.stream("?", mode="chat", max_new_tokens=int(most) + 1)))
    assert app._queue.max_size == demo.QUEUE_SIZE
    # CONCURRENT_JOBS across all tabs: Gradio's concurrency limit is per event unless they share an id
    generating = [fn for fn in app.fns.values() if fn.api_name in ("text_to_image", "chat", "interleave", "image_edit")]
    assert len(generating) == 4
    assert {(fn.concurrency_id, fn.concurrency_limit) for fn in generating} == {("generation", demo.CONCURRENT_JOBS)}


def test_text_to_image_streams_previews_and_returns_n_images(pipe):
    updates = list(demo.text_to_image(pipe, "a red circle", 2.0, 5.0, 1.0, 0))  # sliders send floats
    images, status = updates[-1]
    assert len(images) == 2 and all(isinstance(im, Image.Image) for im in images)
    assert "2 image(s)" in status
    previews = [u[0] for u in updates[:-1] if isinstance(u[0], list)]
    assert previews and all(len(p) == 2 for p in previews)  # partial decodes of both rows


def test_seed_boxes_start_empty_and_each_result_says_the_seed_it_drew(app, pipe):
    seeds = [c for c in app.blocks.values() if getattr(c, "label", None) == "seed"]
    assert len(seeds) == 4 and all(box.value == "" for box in seeds)
    images, status = list(demo.text_to_image(pipe, "a red circle", 1, 1.5, 1.0, ""))[-1]
    seed = int(status.rsplit("seed ", 1)[1])
    assert 0 <= seed < demo.RANDOM_SEEDS
    again, _ = list(demo.text_to_image(pipe, "a red circle", 1, 1.5, 1.0, f" {seed} "))[-1]  # typed back in
    assert again[0].tobytes() == images[0].tobytes()
    _, status = list(demo.interleave(pipe, "Draw a red circle.", 4, 0, 1.5, 1.0, ""))[-1]
    assert "seed " in status


def test_the_edit_tab_shows_its_input_image(app):
    (edit_input,) = [c for c in app.blocks.values() if getattr(c, "label", None) == "input image"]
    assert isinstance(edit_input, gr.Image)
    assert edit_input.preprocess(None) is None  # the handler's "upload an image to edit first"


def test_image_edit_passes_image_and_settings_to_the_pipeline(pipe, picture):
    images, _ = list(demo.image_edit(pipe, picture, "make the circle blue", 1.0, 3.0, 0.5, 7, 2.0))[-1]
    again = pipe.generate_images(
        "make the circle blue",
        images=[picture],
        num_images=1,
        cfg_scale=3.0,
        temperature=0.5,
        seed=7,
        image_cfg_scale=2.0,
    )
    assert len(images) == 1 and images[0].tobytes() == again[0].tobytes()


def test_concurrent_handlers_share_the_schedulers_decode_steps(pipe, monkeypatch):
    scheduler, calls_per_step, step = pipe.scheduler, [], pipe.scheduler._step
    monkeypatch.setattr(
        scheduler, "_step", lambda: (calls_per_step.append(len({r.call for r in scheduler._rows})), step())
    )
    first = demo.text_to_image(pipe, "a red circle", 4, 1.5, 1.0, 0)
    second = demo.text_to_image(pipe, "a blue square", 4, 1.5, 1.0, 1)
    next(first), next(second)  # both handlers are drawing (handlers run on Gradio's worker threads)
    assert "4 image(s)" in list(first)[-1][1] and "4 image(s)" in list(second)[-1][1]
    assert max(calls_per_step) == 2


def test_a_generation_left_unread_stops_and_an_error_reaches_the_page(pipe, monkeypatch):
    updates = demo.text_to_image(pipe, "a red circle", 2, 1.5, 1.0, 0)
    next(updates)
    updates.close()  # the client went away mid-drawing: its rows are cancelled
    end = time.monotonic() + 30
    while pipe.scheduler.free_slots < pipe.scheduler.max_batch:
        assert time.monotonic() < end, "the closed handler's rows kept their slots"
        time.sleep(0.001)
    done = []  # the next job runs (a stuck scheduler would hang it)
    caller = threading.Thread(
        target=lambda: done.extend(demo.text_to_image(pipe, "a blue square", 1, 1.5, 1.0, 0)), daemon=True
    )
    caller.start()
    caller.join(timeout=60)
    assert done and "1 image(s)" in done[-1][1]

    def failing(*args, **kwargs):
        yield from ()
        raise demo.JanusLikeError("the model ran out of context")

    monkeypatch.setattr(pipe.scheduler, "submit", failing)
    with pytest.raises(gr.Error, match="ran out of context"):
        list(demo.text_to_image(pipe, "a red circle", 1, 1.5, 1.0, 0))


def test_chat_answers_and_keeps_a_multi_turn_history(pipe, picture):
    view, turns, box, status = list(demo.chat(pipe, {"text": "What is this?", "files": [picture]}, [], 8, 0.0, 0))[-1]
    assert turns[-1]["answer"] == pipe.chat("What is this?", images=[picture], max_new_tokens=8, seed=0)
    assert box is None and [m["role"] for m in view] == ["user", "assistant"] and "seed 0" in status
    assert isinstance(view[0]["content"][0], gr.Image) and view[0]["content"][1] == "What is this?"
    view, turns, _, _ = list(demo.chat(pipe, {"text": "And now?", "files": []}, turns, 8, 0.0, 0))[-1]
    assert len(turns) == 2 and len(view) == 4 and view[2]["content"] == ["And now?"]


def test_interleave_shows_the_prompt_then_the_parts_in_order(pipe, app):
    prompt = "Draw a red circle, then describe it."
    story, status = list(demo.interleave(pipe, prompt, 64.0, 1.0, 5.0, 1.0, 9))[-1]
    parts = pipe.interleave(prompt, seed=9, max_new_tokens=64, max_images=1)
    assert story[0] == {"role": "user", "content": prompt} and "seed 9" in status
    shown = [m["content"] for m in story[1:]]
    expected = [p for p in parts if isinstance(p, Image.Image) or p.strip()]
    assert len(shown) == len(expected)
    for got, want in zip(shown, expected):
        assert isinstance(got, gr.Image) if isinstance(want, Image.Image) else got == want.strip()


def test_interleaved_display_serialises_text_images_and_the_image_being_drawn(app):
    drawing = ImageProgress(row=0, index=1, done=8, total=16)
    story = demo._story("p", ["A circle:", shape_image(), "  ", "and more"], drawing, shape_image("square"))
    [view] = [c for c in app.blocks.values() if isinstance(c, gr.Chatbot) and c.label == "text and images, in order"]
    shown = view.postprocess(story).model_dump()
    kinds = [(m["role"], m["content"][0]["type"]) for m in shown]
    assert kinds == [
        ("user", "text"),
        ("assistant", "text"),
        ("assistant", "component"),
        ("assistant", "text"),
        ("assistant", "component"),
        ("assistant", "text"),
    ]
    assert shown[-1]["content"][0]["text"] == "*drawing image 2: 8/16 codes*"
    assert str(shown[2]["content"][0]["value"]["path"]).endswith(".png")


def test_small_story_images_are_enlarged_with_sharp_pixels():
    small = shape_image(size=32)
    big = demo._enlarged(small)
    assert big.size == (192, 192) and big.getpixel((0, 0)) == small.getpixel((0, 0))
    assert big.resize((32, 32), Image.Resampling.NEAREST).tobytes() == small.tobytes()
    assert demo._enlarged(shape_image(size=384)).size == (384, 384)


def _corrupt(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(shape_image().tobytes()[:100])
    return str(path)


def _too_large(tmp_path):
    path = tmp_path / "huge.png"  # 81 M pixels (over the 64 M cap, under PIL's bomb limit): a few kB on disk
    Image.new("1", (9000, 9000)).save(path)
    return str(path)


@pytest.mark.parametrize("make_file, words", [(_corrupt, "cannot read image"), (_too_large, "at most 64,000,000")])
def test_bad_uploads_show_the_image_error_message(pipe, tmp_path, make_file, words):
    path = make_file(tmp_path)
    for call in (
        lambda: demo.image_edit(pipe, path, "make it blue", 1, 5.0, 1.0, 0),
        lambda: demo.chat(pipe, {"text": "What is this?", "files": [path]}, [], 8, 0.0, 0),
    ):
        with pytest.raises(gr.Error, match=words) as error:
            list(call())
        assert str(tmp_path) not in str(error.value)  # the page names the file, not the server's upload folder


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda p: demo.text_to_image(p, "x", 0), "num_images"),
        (lambda p: demo.text_to_image(p, "x", MAX_IMAGES_PER_PROMPT + 1), "num_images"),
        (lambda p: demo.text_to_image(p, "x", 2.5), "num_images"),
        (lambda p: demo.text_to_image(p, "x", 1, 5.0, -1.0), "temperature"),
        (lambda p: demo.text_to_image(p, "   ", 1), "empty"),
        (lambda p: demo.image_edit(p, None, "x"), "upload an image"),
        (lambda p: demo.chat(p, {"text": "", "files": []}, []), "empty"),
        (lambda p: demo.chat(p, {"text": "x" * 2000, "files": []}, []), "context"),
        (lambda p: demo.interleave(p, "x", 8, MAX_INTERLEAVED_IMAGES + 1), "max_images"),
        (lambda p: demo.text_to_image(p, "x", 1, 5.0, 1.0, "1.5"), "seed '1.5'"),
    ],
)
def test_bad_settings_show_the_settings_error_message(pipe, call, words, capsys):
    with pytest.raises(gr.Error, match=words) as error:
        list(call(pipe))
    assert not error.value.print_exception  # Gradio prints no traceback for a user's mistake
    logged = capsys.readouterr().err.strip().splitlines()
    assert len(logged) == 1 and logged[0].startswith("janus-like demo: refused a request:") and words in logged[0]


def test_a_port_in_use_is_named_in_one_line_before_the_model_loads(capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--port {port} is already in use" in err


def _get(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _upload(url: str, size: int) -> int:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\0" * size
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return _get(url + "gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})[0]


def test_served_demo_answers_on_loopback_and_serves_no_arbitrary_files(app, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = demo.serve(app, "127.0.0.1", port, block=False)
    try:
        assert url == f"http://127.0.0.1:{port}/" and app.server_name == "127.0.0.1"
        status, page = _get(url)
        assert status == 200 and b"<html" in page.lower()
        for path in (
            "file=/etc/passwd",
            "gradio_api/file=/etc/passwd",
            "gradio_api/file=pyproject.toml",
            f"gradio_api/file={__file__}",
            "static/../../../../etc/passwd",
        ):
            status, body = _get(url + path)
            assert status in (403, 404) and b"root:" not in body, path
        assert _upload(url, 100) == 200
        assert _upload(url, 21 * 1024 * 1024) == 413  # over MAX_FILE_SIZE
        gradio_client = pytest.importorskip("gradio_client")
        client = gradio_client.Client(url, verbose=False)
        gallery, status = client.predict("a red circle", 1, 5.0, 1.0, "0", api_name="/text_to_image")
        assert len(gallery) == 1 and "1 image(s)" in status
        with pytest.raises(Exception, match="cannot read image"):  # the ImageError message reaches the page
            client.predict(
                gradio_client.handle_file(_corrupt(tmp_path)), "x", 1, 5.0, 1.0, "0", 1.0, api_name="/image_edit"
            )
        with pytest.raises(Exception, match="maximum value 64"):  # sliders are bounded server-side too
            client.predict("x", MAX_IMAGES_PER_PROMPT + 1, 5.0, 1.0, "0", api_name="/text_to_image")
    finally:
        app.close()


@pytest.mark.parametrize("host", ["::1", "::", ""])
def test_hosts_gradio_cannot_serve_are_refused_in_one_line(host, capsys):
    assert main(["demo", "--host", host]) == 2  # Gradio writes http://::1:7860 and fails with a traceback
    err = capsys.readouterr().err.strip()
    assert "--host" in err and "IPv4" in err and len(err.splitlines()) == 1


def test_missing_gradio_gives_the_install_hint(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio":
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["demo"]) == 2
    assert "pip install 'janus_like[demo]'" in capsys.readouterr().err
