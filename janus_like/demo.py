"""`janus-like demo`: a Gradio app on `JanusLikePipeline` (text -> image, chat, interleaved, image edit).

Safe by default: it listens on 127.0.0.1, queues at most `QUEUE_SIZE` jobs and runs up to
`CONCURRENT_JOBS` of them at once (sharing the pipeline scheduler's decode steps),
caps uploads in bytes (Gradio) and pixels (`load_image`), and serves no files but Gradio's own
uploads and outputs. The handlers are plain functions of the pipeline, so tests call them directly.
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

from PIL import Image

from .commands import load_pipeline
from .errors import ImageError, JanusLikeError, PromptError, SettingsError
from .generation import Done, Event, ImageDone, ImageProgress, TextDelta
from .generation.settings import MAX_IMAGES_PER_PROMPT, MAX_INTERLEAVED_IMAGES
from .images import display_factor, load_image
from .pipeline import JanusLikePipeline, check_prompt

if TYPE_CHECKING:
    import gradio

MAX_FILE_SIZE = "20mb"  # per upload, refused by Gradio before any decoding; pixels are capped by load_image
MAX_NEW_TOKENS = 2048  # slider cap (also bounded by the model's context)
QUEUE_SIZE = 16  # waiting jobs; more are refused with "queue full"
UPDATE_SECONDS = 0.25  # streamed UI updates at most this often (each one re-renders the output)
PREVIEWS_PER_IMAGE = 4  # partial decodes shown while an image is drawn
HISTORY_SIDE = 1024  # chat images are kept at most this large (session memory stays bounded)
THUMB_SIDE = 256  # chat images are shown this large
LOOPBACK = ("127.0.0.1", "localhost")
RANDOM_SEEDS = 2**32  # an empty seed box draws one below this: short enough to type back in
CONCURRENT_JOBS = 8  # generations running at once; they share decode steps in the pipeline's scheduler
# every generating event shares one limit: Gradio's concurrency limit is per event unless they share an id
SHARED_LIMIT = {"concurrency_id": "generation", "concurrency_limit": CONCURRENT_JOBS}
# Gradio shows an error's toast for 10 s, beside the next run's good results: each run closes them first
CLOSE_TOASTS = "document.querySelectorAll('[data-testid=toast-close]').forEach(button => button.click());"


def _gradio():
    """Import gradio, an optional extra, only when the demo is used."""
    try:
        import gradio
    except ImportError as e:
        raise JanusLikeError("the demo needs gradio, which is not installed: pip install 'janus_like[demo]'") from e
    return gradio


@contextmanager
def _shown_in_ui():
    """A user error becomes gr.Error so the page shows its message, and one line on the server's
    console (no traceback: nothing is broken); other errors stay generic on the page, with a traceback."""
    try:
        yield
    except JanusLikeError as e:
        print(f"janus-like demo: refused a request: {e}", file=sys.stderr)
        raise _gradio().Error(str(e), print_exception=False) from e


def _on_generation_thread(events: Iterator[Event]) -> Iterator[Event]:
    """A generation's events. The pipeline's scheduler runs every generation on its own thread and
    shares decode steps between concurrent users; closing this iterator (a client went away)
    cancels the generation and frees its cache rows."""
    try:
        yield from events
    finally:
        events.close()


# ---------------------------------------------------------------------- handlers


def text_to_image(
    pipe: JanusLikePipeline,
    prompt: str,
    num_images: int = 4,
    cfg_scale: float | None = None,
    temperature: float = 1.0,
    seed: str | int | None = None,
    image: str | None = None,
    image_cfg_scale: float = 1.0,
) -> Iterator[tuple]:
    """Prompt (+ an input image, for edits) -> (gallery images, status line), streamed with previews."""
    gr = _gradio()
    with _shown_in_ui():
        images = [_load_upload(image)] if image else None
        n, total, seed = _int(num_images), pipe.processor.num_gen_tokens, _seed(seed)
        events = _on_generation_thread(
            pipe.stream(
                prompt,
                mode="images",
                images=images,
                num_images=n,
                cfg_scale=cfg_scale,
                image_cfg_scale=image_cfg_scale,
                temperature=temperature,
                seed=seed,
                preview_every=max(1, total // PREVIEWS_PER_IMAGE),
            )
        )
        start = last = time.monotonic()
        previews: dict[int, Image.Image] = {}
        for event in events:
            if isinstance(event, ImageProgress):
                if event.preview is not None:
                    previews[event.row] = event.preview
                fresh = event.preview is not None and event.row == n - 1 and len(previews) == n
                if fresh or time.monotonic() - last >= UPDATE_SECONDS:
                    last = time.monotonic()
                    gallery = [previews[i] for i in range(n)] if fresh else gr.skip()
                    yield gallery, f"drawing… {event.done}/{event.total} codes"
            elif isinstance(event, Done):
                results = [im for result in event.results for im in result.images]
    yield results, f"{len(results)} image(s) in {time.monotonic() - start:.1f} s · seed {seed}"


def image_edit(
    pipe: JanusLikePipeline,
    image: str | None,
    instruction: str,
    num_images: int = 4,
    cfg_scale: float | None = None,
    temperature: float = 1.0,
    seed: str | int | None = None,
    image_cfg_scale: float = 1.0,
) -> Iterator[tuple]:
    """Input image + instruction -> (gallery images, status line)."""
    if not image:
        with _shown_in_ui():
            raise ImageError("upload an image to edit first")
    yield from text_to_image(
        pipe, instruction, num_images, cfg_scale, temperature, seed, image=image, image_cfg_scale=image_cfg_scale
    )


def chat(
    pipe: JanusLikePipeline,
    message: dict | None,
    turns: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: str | int | None = None,
) -> Iterator[tuple]:
    """A question (+ uploaded images) after the earlier turns -> (chat display, turns, cleared input,
    status line), with the answer streamed. `turns` (server-side state) holds questions, checked images
    and answers."""
    message = message or {}
    with _shown_in_ui():
        text = check_prompt(message.get("text") or "").strip()
        images = [_fit(_load_upload(_path(f)), HISTORY_SIDE) for f in message.get("files") or []]
        messages = _messages(turns) + [_user(text, images)]
        seed = _seed(seed)
        events = _on_generation_thread(
            pipe.stream(messages, mode="chat", max_new_tokens=_int(max_new_tokens), temperature=temperature, seed=seed)
        )
        earlier, turns = turns, turns + [{"text": text, "images": images, "answer": ""}]
        start = last = time.monotonic()
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    turns[-1]["answer"] += event.text
                    if time.monotonic() - last >= UPDATE_SECONDS:
                        last = time.monotonic()
                        yield _chat_display(turns), turns, None, "writing…"
                elif isinstance(event, Done):
                    turns[-1]["answer"] = event.results[0].text.strip()
        except PromptError as e:
            if earlier:
                raise PromptError(
                    f"{e} (the {len(earlier)} earlier turn(s) count too: press Clear to start over)"
                ) from e
            raise
    yield _chat_display(turns), turns, None, f"answered in {time.monotonic() - start:.1f} s · seed {seed}"


def interleave(
    pipe: JanusLikePipeline,
    prompt: str,
    max_new_tokens: int = 512,
    max_images: int = 2,
    cfg_scale: float | None = None,
    temperature: float = 1.0,
    seed: str | int | None = None,
) -> Iterator[tuple]:
    """Prompt -> (the model's text and images in the order it wrote them as a chat display, status
    line), streamed."""
    with _shown_in_ui():
        total, seed = pipe.processor.num_gen_tokens, _seed(seed)
        events = _on_generation_thread(
            pipe.stream(
                prompt,
                mode="interleave",
                max_new_tokens=_int(max_new_tokens),
                max_images=_int(max_images),
                cfg_scale=cfg_scale,
                temperature=temperature,
                seed=seed,
                preview_every=max(1, total // PREVIEWS_PER_IMAGE),
            )
        )
        parts: list[str | Image.Image] = []
        drawing, preview = None, None  # the image being drawn: its progress and latest preview
        start = last = time.monotonic()
        for event in events:
            if isinstance(event, TextDelta):
                if parts and isinstance(parts[-1], str):
                    parts[-1] += event.text
                else:
                    parts.append(event.text)
            elif isinstance(event, ImageProgress):
                drawing, preview = event, preview if event.preview is None else event.preview
            elif isinstance(event, ImageDone):
                parts.append(event.image)
                drawing, preview = None, None
            elif isinstance(event, Done):
                parts = event.results[0].parts
            if time.monotonic() - last >= UPDATE_SECONDS:
                last = time.monotonic()
                yield _story(prompt, parts, drawing, preview), "writing…"
    yield _story(prompt, parts, None, None), f"written in {time.monotonic() - start:.1f} s · seed {seed}"


# ---------------------------------------------------------------------- display helpers


def _story(prompt: str, parts: list, drawing: ImageProgress | None, preview: Image.Image | None) -> list[dict]:
    """Chatbot messages: the prompt, then each text and image part, then the image being drawn."""
    gr = _gradio()
    shown = [{"role": "user", "content": prompt}]
    for part in parts:
        if isinstance(part, Image.Image):
            shown.append({"role": "assistant", "content": gr.Image(value=_enlarged(part), format="png")})
        elif part.strip():
            shown.append({"role": "assistant", "content": part.strip()})
    if drawing is not None:
        if preview is not None:
            shown.append({"role": "assistant", "content": gr.Image(value=_enlarged(preview), format="png")})
        shown.append(
            {
                "role": "assistant",
                "content": f"*drawing image {drawing.index + 1}: {drawing.done}/{drawing.total} codes*",
            }
        )
    return shown


def _chat_display(turns: list[dict]) -> list[dict]:
    """Chatbot messages: each question with thumbnails of its images, then the answer so far."""
    gr = _gradio()
    shown = []
    for turn in turns:
        thumbs = [gr.Image(value=_fit(im, THUMB_SIDE)) for im in turn["images"]]
        shown.append({"role": "user", "content": thumbs + [turn["text"]]})
        shown.append({"role": "assistant", "content": turn["answer"].strip() or "…"})
    return shown


def _messages(turns: list[dict]) -> list[dict]:
    """Earlier turns as the pipeline's multimodal messages."""
    messages = []
    for turn in turns:
        messages.append(_user(turn["text"], turn["images"]))
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["answer"]}]})
    return messages


def _user(text: str, images: list[Image.Image]) -> dict:
    """A user message with images first, as DeepSeek's prompts put them."""
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def _enlarged(image: Image.Image) -> Image.Image:
    """Small images (the default model draws 64 px) blown up by a whole factor, pixels kept sharp:
    the chat view shows images at their own size."""
    factor = display_factor(image.size)
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _fit(image: Image.Image, side: int) -> Image.Image:
    """A copy no larger than side x side (aspect kept)."""
    image = image.copy()
    image.thumbnail((side, side), Image.Resampling.BICUBIC)
    return image


def _load_upload(path: str) -> Image.Image:
    """An uploaded image; its errors name the file, not the server's upload folder."""
    try:
        return load_image(path)
    except ImageError as e:
        raise ImageError(str(e).replace(path, os.path.basename(path))) from e


def _path(file) -> str:
    """MultimodalTextbox files are paths (or FileData-like dicts in older Gradio)."""
    return file["path"] if isinstance(file, dict) else file


def _int(x):
    """Sliders send floats; a whole float becomes an int, anything else goes on to be refused."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _seed(seed: str | int | float | None) -> int:
    """The seed box's text (or an API client's number) -> a seed; empty -> a random one, drawn here so
    that the result can say which it was. Range errors are left to GenerationSettings."""
    if isinstance(seed, str):
        seed = seed.strip()
        if seed and not seed.isdigit():
            raise SettingsError(
                f"seed {seed!r} is not accepted; give a whole number >= 0, or leave it empty for a random one"
            )
        seed = int(seed) if seed else None
    return secrets.randbelow(RANDOM_SEEDS) if seed is None else _int(seed)


# ---------------------------------------------------------------------- app


def build_demo(pipe: JanusLikePipeline) -> gradio.Blocks:
    """The Blocks app (queued: CONCURRENT_JOBS at a time, at most QUEUE_SIZE waiting); not launched."""
    gr = _gradio()
    shortest = pipe.processor.conversation([{"role": "user", "content": "?"}])  # the room a question leaves
    max_tokens = min(MAX_NEW_TOKENS, pipe.processor.config.text_config.max_position_embeddings - len(shortest))

    def seed_box():  # a textbox: Gradio's Number box shows 0 when empty
        return gr.Textbox(label="seed", placeholder="empty: random", value="", max_lines=1)

    def cfg_slider():  # starts at the guidance the model was tuned for
        return gr.Slider(1.0, 10.0, value=pipe.default_cfg_scale, step=0.5, label="CFG scale")

    def temperature_slider(value: float):
        return gr.Slider(0.0, 2.0, value=value, step=0.05, label="temperature (0: greedy)")

    def drawing_tab(name: str, make_inputs, num_images: int, button: str, fn, make_extra=list) -> None:
        """A tab that draws images: its own inputs, then number, guidance, temperature, seed, its
        own extra controls; a gallery."""
        with gr.Tab(name):
            with gr.Row():
                with gr.Column(scale=1):
                    inputs = (
                        make_inputs()
                        + [
                            gr.Slider(1, MAX_IMAGES_PER_PROMPT, value=num_images, step=1, label="number of images"),
                            cfg_slider(),
                            temperature_slider(1.0),
                            seed_box(),
                        ]
                        + make_extra()
                    )
                    go = gr.Button(button, variant="primary")
                with gr.Column(scale=2):
                    outputs = [gr.Gallery(label="images", columns=4, format="png"), gr.Markdown()]
            go.click(
                partial(fn, pipe), inputs, outputs, api_name=fn.__name__, js=_closing_toasts(inputs), **SHARED_LIMIT
            )

    with gr.Blocks(title="janus_like", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## janus_like — one autoregressive model that reads, writes and draws")
        drawing_tab(
            "Text → image",
            lambda: [gr.Textbox(label="prompt", value="a red circle on the left", lines=2)],
            4,
            "Generate",
            text_to_image,
        )

        with gr.Tab("Chat"):
            turns = gr.State([])
            chat_view = gr.Chatbot(label="conversation", height=420)
            chat_status = gr.Markdown()
            chat_box = gr.MultimodalTextbox(
                label="question",
                file_types=["image"],
                file_count="multiple",
                sources=["upload"],
                placeholder="Ask about an image (attach it with the clip)…",
            )
            with gr.Row():
                chat_tokens = gr.Slider(1, max_tokens, value=min(256, max_tokens), step=1, label="max new tokens")
                chat_temp = temperature_slider(0.0)
                chat_seed = seed_box()
                chat_clear = gr.Button("Clear")
            chat_inputs = [chat_box, turns, chat_tokens, chat_temp, chat_seed]
            chat_box.submit(
                partial(chat, pipe),
                chat_inputs,
                [chat_view, turns, chat_box, chat_status],
                api_name="chat",
                js=_closing_toasts(chat_inputs),
                **SHARED_LIMIT,
            )
            chat_clear.click(lambda: ([], [], None, ""), None, [chat_view, turns, chat_box, chat_status], queue=False)

        with gr.Tab("Interleaved"):
            with gr.Row():
                with gr.Column(scale=1):
                    il_prompt = gr.Textbox(
                        label="prompt", value="Draw a red circle on the left, then describe it.", lines=2
                    )
                    il_tokens = gr.Slider(1, max_tokens, value=min(512, max_tokens), step=1, label="max new tokens")
                    il_images = gr.Slider(0, MAX_INTERLEAVED_IMAGES, value=2, step=1, label="max images")
                    il_cfg = cfg_slider()
                    il_temp = temperature_slider(1.0)
                    il_seed = seed_box()
                    il_go = gr.Button("Write", variant="primary")
                with gr.Column(scale=2):
                    il_out = gr.Chatbot(label="text and images, in order", height=520)
                    il_status = gr.Markdown()
            il_inputs = [il_prompt, il_tokens, il_images, il_cfg, il_temp, il_seed]
            il_go.click(
                partial(interleave, pipe),
                il_inputs,
                [il_out, il_status],
                api_name="interleave",
                js=_closing_toasts(il_inputs),
                **SHARED_LIMIT,
            )

        drawing_tab(
            "Image edit",
            lambda: [
                _image_input(label="input image", sources=["upload"], height=256),
                gr.Textbox(label="instruction", value="make it blue", lines=2),
            ],
            2,
            "Edit",
            image_edit,
            lambda: [
                gr.Slider(
                    0.0,
                    5.0,
                    value=1.0,
                    step=0.1,
                    label="image guidance (InstructPix2Pix: above 1 keeps more of the input)",
                )
            ],
        )
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)


def _closing_toasts(inputs: list) -> str:
    """An event's front-end step that closes the toasts and passes the inputs' values on unchanged
    (Gradio's documentation has it receive the outputs' values after them: those are dropped)."""
    return f"(...values) => {{ {CLOSE_TOASTS} return values.slice(0, {len(inputs)}); }}"


def _image_input(**kwargs) -> gradio.Image:
    """gr.Image that shows an upload but hands the handler its path, undecoded: gr.Image's own
    preprocessing opens it with PIL and fails on a bad file with a generic error, where load_image
    names the problem (and caps the pixels). Overridden on the instance: subclassing a component
    makes Gradio write a .pyi stub beside this module."""
    image = _gradio().Image(type="filepath", **kwargs)
    image.preprocess = lambda payload: None if payload is None or payload.path is None else str(payload.path)
    return image


def serve(demo: gradio.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Launch with the safe settings (upload cap, no extra served paths, no share link, no telemetry);
    returns the local URL. `block=False` returns at once (the server runs in a thread)."""
    gr = _gradio()
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )  # local fonts: the page fetches nothing
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=None,
        ssr_mode=False,
        show_error=False,
        prevent_thread_lock=not block,
        quiet=not block,
        theme=theme,
        footer_links=["gradio", "settings"],
    )
    return url


def demo_command(args: argparse.Namespace) -> int:
    """`janus-like demo`: load the model and serve the app until interrupted."""
    _gradio()  # fail with the install hint before loading any weights
    if not args.host or ":" in args.host:  # Gradio writes http://{host}:{port}, which breaks on IPv6 addresses
        raise SettingsError(
            f"--host {args.host!r} is not accepted; give an IPv4 address or a host name "
            "(127.0.0.1, the default, or 0.0.0.0 for every interface)"
        )
    check_host(args.host)
    if args.host not in LOOPBACK:
        print(
            f"janus-like demo: listening on {args.host}; anyone who can reach port {args.port} can use "
            "the model (there is no authentication)",
            file=sys.stderr,
        )
    _check_port_free(args.host, args.port)
    pipe = load_pipeline(args)
    pipe.processor.literal_user_text = not args.allow_special_tokens  # typed `<begin_of_image>` stays text
    serve(build_demo(pipe), args.host, args.port)
    return 0


def check_host(host: str) -> None:
    """A host name that resolves: Gradio reports one that does not as "Cannot find empty port"."""
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise SettingsError(
            f"--host {host!r} cannot be resolved ({getattr(e, 'strerror', None) or e}); give an "
            "IPv4 address or a host name this machine resolves (127.0.0.1, the default, or 0.0.0.0 "
            "for every interface)"
        ) from None


def _check_port_free(host: str, port: int) -> None:
    """Name a port another server holds before any weights load (Gradio's own message would point at
    its GRADIO_SERVER_PORT variable, after the load)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise SettingsError(
                    f"--port {port} is already in use on {host} (another server listens there); "
                    "stop it or choose another port with --port"
                ) from e
