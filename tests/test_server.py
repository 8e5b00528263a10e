"""`janus-like serve` through the official `openai` client: a real server on a free loopback port,
on the embedded default model, checked against JanusLikePipeline's own outputs."""

import ast
import base64
import concurrent.futures
import contextlib
import inspect
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from PIL import Image

from janus_like import serving
from janus_like.cli import main
from janus_like.evaluation.shapes import Scene, render
from janus_like.evaluation.shapes_language import describe, draw_request
from janus_like.pipeline import JanusLikePipeline
from janus_like.processor import JanusLikeProcessor
from janus_like.serving.server import ServerSettings, create_app

KEY = "test-key"
MODEL = "janus-like-default"
MAX_BATCH, MAX_QUEUE = 16, 16
MAX_PIXELS = 256 * 256
MAX_BODY = 1 * 2**20
SCENE = Scene.single("red", "circle", "large", "center")
SCENE_PROMPT = describe(SCENE)
TIMEOUT = 60  # seconds any one request may take here: nothing may hang


@pytest.fixture(scope="module")
def reference():
    """The pipeline the server's outputs are compared with (a pipeline of its own)."""
    return JanusLikePipeline.from_pretrained()


@contextlib.contextmanager
def running(app):
    """`app` on a free 127.0.0.1 port, in a thread, until the block ends; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def served():
    """The pipeline behind the server (apps of other settings may share it)."""
    return JanusLikePipeline.from_pretrained()


@pytest.fixture(scope="module")
def server(served):
    """The server most tests talk to, stopped after the module's tests."""
    settings = ServerSettings(
        max_batch=MAX_BATCH, max_queue=MAX_QUEUE, api_key=KEY, max_body_bytes=MAX_BODY, max_image_pixels=MAX_PIXELS
    )
    with running(create_app(served, settings)) as base:
        yield base


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image.convert("RGB")


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def image_question():
    """A user turn asking about a rendered shape: OpenAI's parts, and the same turn as the processor takes it."""
    image = render(SCENE)
    openai_turn = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(image)}},
                {"type": "text", "text": "What is in the image?"},
            ],
        }
    ]
    pipeline_turn = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is in the image?"}],
        }
    ]
    return openai_turn, pipeline_turn


def metrics(server: str) -> dict[str, float]:
    """The unlabelled samples of /metrics."""
    text = httpx.get(f"{server}/metrics", timeout=TIMEOUT).text
    return {name: float(value) for name, value in re.findall(r"^(\w+) (\S+)$", text, re.MULTILINE)}


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# ---------------------------------------------------------------------- good requests


def test_models_health_and_metrics_format(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).json()["status"] == "ok"
    text = httpx.get(f"{server}/metrics", timeout=TIMEOUT).text
    for name in (
        "janus_like_queue_length",
        "janus_like_active_rows",
        "janus_like_tokens_per_second",
        "janus_like_images_per_second",
        "janus_like_request_duration_seconds",
    ):
        assert f"# TYPE {name} " in text
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')
    assert all(line.startswith("#") or sample.match(line) for line in text.splitlines()), text


def test_chat_with_an_image_equals_the_pipeline(client, reference):
    openai_turn, pipeline_turn = image_question()
    answer = client.chat.completions.create(model=MODEL, messages=openai_turn, max_tokens=24, temperature=0)
    expected = reference.chat(pipeline_turn, max_new_tokens=24, temperature=0)
    assert answer.choices[0].message.content == expected
    assert expected.startswith("A large red circle")  # the default model reads the rendered shape
    assert answer.usage.prompt_tokens == len(reference.processor.conversation(pipeline_turn))
    assert 0 < answer.usage.completion_tokens <= 24
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_streamed_chat_equals_the_pipeline(client, reference):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Describe a square."}]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference.chat(messages, max_new_tokens=20, temperature=0)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["stop"],
        ["length"],
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_seeded_chat_choices_and_stop(client, reference):
    messages = [{"role": "user", "content": "Describe a red circle."}]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, n=2, seed=7, temperature=1.0, max_tokens=16, stop=["."]
    )
    for i, choice in enumerate(answer.choices):
        assert choice.index == i
        assert choice.message.content == reference.chat(
            messages, max_new_tokens=16, temperature=1.0, seed=7 + i, stop=["."]
        )


def test_image_generation_b64_equals_the_pipeline(client, reference):
    result = client.images.generate(
        model=MODEL,
        prompt=SCENE_PROMPT,
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 3, "cfg_scale": 2.0, "cfg_plausibility": 0.3},
    )
    expected = reference.generate_images(SCENE_PROMPT, num_images=2, seed=3, cfg_scale=2.0, cfg_plausibility=0.3)
    images = [decoded(d.b64_json) for d in result.data]
    assert len(images) == 2 and all(same_pixels(a, b) for a, b in zip(images, expected, strict=True))


def test_image_edit_equals_the_pipeline(client, reference):
    source = render(SCENE)
    result = client.images.edit(
        model=MODEL,
        image=("circle.png", png_bytes(source), "image/png"),
        prompt="make it blue",
        n=1,
        extra_body={"seed": 5},
    )
    expected = reference.generate_images("make it blue", num_images=1, seed=5, images=[source])
    assert len(result.data) == 1 and same_pixels(decoded(result.data[0].b64_json), expected[0])


def test_interleaved_stream_gives_text_and_images_in_order(client, reference):
    prompt = draw_request([SCENE])
    settings = {"seed": 0, "max_images": 1, "temperature": 0, "image_temperature": 1.0}  # greedy words, drawn images
    expected = reference.interleave(prompt, max_new_tokens=48, **settings)
    assert any(isinstance(p, Image.Image) for p in expected)  # the request is one that draws
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=48,
        stream=True,
        extra_body={"modalities": ["text", "image"], **settings},
    )
    content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    parts = [p for p in re.split(r"(!\[image \d+\]\(data:image/png;base64,[A-Za-z0-9+/=]+\))", content) if p]
    assert len(parts) == len(expected)
    for got, want in zip(parts, expected, strict=True):
        if isinstance(want, str):
            assert got == want
        else:
            assert same_pixels(decoded(got.split(",", 1)[1].rstrip(")")), want)
    whole = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=48,
        extra_body={"modalities": ["text", "image"], **settings},
    )
    assert whole.choices[0].message.content == content


# ---------------------------------------------------------------------- bad requests


def chat_error(client, **fields) -> openai.APIStatusError:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**{k: body.pop(k) for k in ("model", "messages")}, extra_body=body)
    return caught.value


def test_bad_requests_get_their_status_while_good_ones_succeed(server, client):
    def good(i: int) -> bool:
        if i % 2:
            return len(client.images.generate(prompt="a blue square", n=1).data) == 1
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        return answer.choices[0].finish_reason in ("stop", "length")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        goods = [pool.submit(good, i) for i in range(8)]
        checks = [
            (chat_error(client, n=9), openai.BadRequestError, "n", "[1, 8]"),
            (chat_error(client, max_tokens="ten"), openai.BadRequestError, "max_tokens", "valid integer"),
            (chat_error(client, temperature=500), openai.BadRequestError, "temperature", "[0.0001, 100]"),
            (chat_error(client, top_k=[1]), openai.BadRequestError, "top_k", "integer"),
            (chat_error(client, best_of=3), openai.BadRequestError, "best_of", "accepted fields"),
            (chat_error(client, messages=[{"role": "user", "content": " "}]), openai.BadRequestError, None, "empty"),
            (
                chat_error(client, messages=[{"role": "tool", "content": "x"}]),
                openai.BadRequestError,
                "messages.0.role",
                "'user'",
            ),
            (chat_error(client, max_tokens=5000), openai.BadRequestError, None, "context holds 1024"),
            (chat_error(client, cfg_scale=3.0), openai.BadRequestError, "cfg_scale", "modalities"),
            (chat_error(client, image_temperature=1.0), openai.BadRequestError, "image_temperature", "modalities"),
            (
                chat_error(client, modalities=["text", "image"], image_temperature=-1),
                openai.BadRequestError,
                "image_temperature",
                "[0.0001, 100]",
            ),
            (
                chat_error(
                    client,
                    messages=[
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
                        }
                    ],
                ),
                openai.BadRequestError,
                "messages[0].content[0].image_url",
                "data URLs",
            ),
            (
                chat_error(
                    client,
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image_url",
                                    "image_url": {
                                        "url": "data:image/png;base64,"
                                        + base64.b64encode(b"\x89PNG\r\n\x1a\nnot a png").decode()
                                    },
                                }
                            ],
                        }
                    ],
                ),
                openai.BadRequestError,
                "messages[0].content[0].image_url",
                "cannot read",
            ),
            (
                chat_error(
                    client,
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": data_url(Image.new("RGB", (300, 300)))}}
                            ],
                        }
                    ],
                ),
                openai.APIStatusError,
                "messages[0].content[0].image_url",
                f"at most {MAX_PIXELS:,}",
            ),
            (chat_error(client, model="gpt-4o"), openai.NotFoundError, "model", MODEL),
        ]
        for error, kind, param, words in checks:
            assert isinstance(error, kind), error
            assert error.body["param"] == param and words in error.body["message"], error.body
        assert checks[13][0].status_code == 413

        for call, param, words in [
            (lambda: client.images.generate(prompt=""), None, "empty"),
            (lambda: client.images.generate(prompt="x", n=11), "n", "[1, 10]"),
            (lambda: client.images.generate(prompt="x", size="1024x1024"), "size", "'64x64'"),
            (lambda: client.images.generate(prompt="x", response_format="url"), "response_format", "b64_json"),
            (
                lambda: client.images.generate(prompt="x", extra_body={"cfg_plausibility": 2}),
                "cfg_plausibility",
                "[0, 1]",
            ),
            (
                lambda: client.images.edit(image=("bad.png", b"GIF89a broken", "image/png"), prompt="x"),
                "image",
                "cannot read",
            ),
        ]:
            with pytest.raises(openai.BadRequestError) as caught:
                call()
            assert caught.value.body["param"] == param and words in caught.value.body["message"], caught.value.body

        huge = httpx.post(
            f"{server}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "x" * MAX_BODY}]},
            timeout=TIMEOUT,
        )
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
        chunked = httpx.post(
            f"{server}/v1/chat/completions",
            content=(b"x" * 2**16 for _ in range(32)),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=TIMEOUT,
        )  # no Content-Length: refused once MAX_BODY bytes have arrived
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
        malformed = httpx.post(
            f"{server}/v1/chat/completions",
            content=b'{"model": ',
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=TIMEOUT,
        )
        assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(f"{server}/v1/models", timeout=TIMEOUT).status_code == 401
        assert all(g.result(timeout=TIMEOUT) for g in goods)
    assert client.models.list().data[0].id == MODEL  # still serving


# ---------------------------------------------------------------------- load and cancellation


def test_a_stream_closed_by_its_client_stops_its_generation(server, client):
    before = metrics(server)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell a story."}],
        max_tokens=900,
        temperature=1.0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert wait_for(
        lambda: (
            metrics(server)["janus_like_cancelled_generations_total"]
            == before["janus_like_cancelled_generations_total"] + 1
        )
    )
    after = metrics(server)
    assert after["janus_like_active_rows"] == 0 and after["janus_like_requests_in_flight"] == 0
    # a generation that ran to its end would have counted its 900 tokens
    assert after["janus_like_generated_tokens_total"] == before["janus_like_generated_tokens_total"]


def test_a_request_whose_client_times_out_stops_its_generation(server):
    before = metrics(server)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{server}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=0.5,
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Go on."}],
                "max_tokens": 900,
                "ignore_eos": True,
            },
        )
    assert wait_for(
        lambda: (
            metrics(server)["janus_like_cancelled_generations_total"]
            == before["janus_like_cancelled_generations_total"] + 1
        )
    )
    after = metrics(server)
    assert after["janus_like_requests_in_flight"] == 0 and after["janus_like_active_rows"] == 0
    assert after["janus_like_generated_tokens_total"] == before["janus_like_generated_tokens_total"]


def test_a_seeded_request_gives_the_same_alone_and_among_15_others(client):
    def draw(seed: int) -> list[bytes]:
        result = client.images.generate(model=MODEL, prompt=SCENE_PROMPT, n=1, extra_body={"seed": seed})
        return [np.asarray(decoded(d.b64_json)).tobytes() for d in result.data]

    def say(seed: int) -> str:
        return (
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Describe it."}],
                max_tokens=16,
                temperature=1.0,
                seed=seed,
            )
            .choices[0]
            .message.content
        )

    alone = draw(11), say(11)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        others = [pool.submit(draw if i % 2 else say, 100 + i) for i in range(14)]
        among = pool.submit(draw, 11), pool.submit(say, 11)
        assert (among[0].result(timeout=TIMEOUT), among[1].result(timeout=TIMEOUT)) == alone
        assert all(o.result(timeout=TIMEOUT) for o in others)


def test_64_clients_against_a_queue_of_16_each_end_with_a_result_or_429(served):
    with running(create_app(served, ServerSettings(max_batch=1, max_queue=16))) as base:
        clients = [
            openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT) for _ in range(64)
        ]
        start = threading.Barrier(64)

        def one(c: openai.OpenAI) -> str:
            start.wait()
            try:  # 48 steps each, one request at a time: the 17 admitted keep the others out for a while
                answer = c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Go on."}],
                    max_tokens=48,
                    extra_body={"ignore_eos": True},
                )
                return "ok" if answer.usage.completion_tokens == 48 else "short"
            except openai.RateLimitError as e:
                return f"429 after {e.response.headers['Retry-After']}"

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            outcomes = list(pool.map(one, clients, timeout=4 * TIMEOUT))
        assert len(outcomes) == 64 and set(outcomes) <= {"ok", "429 after 1"}
        assert outcomes.count("ok") >= 17 and outcomes.count("429 after 1") >= 1
        after = metrics(base)
        assert after["janus_like_rejected_requests_total"] == outcomes.count("429 after 1")
        assert after["janus_like_requests_in_flight"] == 0 and after["janus_like_queue_length"] == 0


@pytest.mark.skipif(
    "literal_user_text" not in inspect.signature(JanusLikeProcessor).parameters,
    reason="the processor reads typed special tokens as text from i19's literal_user_text on",
)
def test_a_typed_special_token_reaches_the_model_as_text(client, reference):
    messages = [{"role": "user", "content": "<begin_of_image> what is this?"}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    counts = {}
    for literal in (True, False):
        reference.processor.literal_user_text = literal
        counts[literal] = len(reference.processor.conversation(messages))
    assert answer.usage.prompt_tokens == counts[True] != counts[False]


def test_typed_special_tokens_stay_text_unless_allowed(served):
    create_app(served, ServerSettings())
    assert served.processor.literal_user_text is True
    create_app(served, ServerSettings(allow_special_tokens=True))
    assert served.processor.literal_user_text is False
    create_app(served, ServerSettings())


# ---------------------------------------------------------------------- command line


@pytest.mark.slow
def test_the_serve_command_starts_a_server_that_answers(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "JANUS_LIKE_API_KEY": "from-env", "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "janus_like.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _answers(f"{base}/health"), seconds=120), "the server did not start"
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="from-env", max_retries=0, timeout=TIMEOUT)
        assert c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert httpx.get(f"{base}/v1/models", timeout=TIMEOUT).status_code == 401  # the key came from the variable
    finally:
        process.terminate()
        process.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_arguments_are_checked_before_loading(capsys):
    assert main(["serve", "--max-batch", "0"]) == 2
    assert "--max-batch 0 is not accepted; give an integer in [1, 4096]" in capsys.readouterr().err
    assert main(["serve", "--max-body-mb", "-1"]) == 2
    assert "(0, 1024]" in capsys.readouterr().err


def test_the_command_line_imports_no_web_framework():
    """`janus-like --help` builds the serve parser: its modules import FastAPI and uvicorn only when serving."""
    for module in (serving, serving.commands):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {
            alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
        assert not imported & {"fastapi", "uvicorn", "starlette", "torch"}, (module.__name__, imported)
