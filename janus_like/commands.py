"""`janus-like generate | chat | interleave` (docs/ARCHITECTURE.md §7): load, run the engine with a
progress bar, write the results (files go to a temporary name first, then are renamed)."""

from __future__ import annotations

import argparse
import html
import re
import secrets
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .errors import PromptError
from .fileio import check_output_folder, output_set, save_image, write_json, write_text
from .generation.events import Done, ImageDone, ImageProgress, TextDelta
from .generation.settings import MAX_IMAGES_PER_PROMPT, MAX_SEED, check_num_images, check_sampling
from .images import display_factor
from .pipeline import JanusLikePipeline, check_prompt


def _pipeline(args: argparse.Namespace, prompts: list[str] | None = None, **settings) -> JanusLikePipeline:
    """Check the prompt(s) and settings (fast, before any weights are read), then load the model."""
    for prompt in prompts or [args.prompt]:
        check_prompt(prompt)
    check_sampling(**settings)
    return load_pipeline(args)


# said once on stderr when a command loads the embedded default model
DEFAULT_MODEL_NOTE = (
    "janus-like: no --model given, so this runs the embedded default model, a 5.7M-parameter toy "
    "that knows only a shapes world (one or two small or large circles, squares, triangles or stars "
    "in red, green, blue, yellow, purple or orange, left, right, top, bottom or center of a 64 px "
    "image); --model DIR or a hub id loads real Janus weights"
)


def load_pipeline(args: argparse.Namespace, **options) -> JanusLikePipeline:
    """The model a command's --model, --device, --dtype and --compile name (`options`: more of
    from_pretrained's); on the embedded default model, first one line on stderr saying what it knows
    and that --model loads real weights."""
    if args.model is None:
        print(DEFAULT_MODEL_NOTE, file=sys.stderr)
    return JanusLikePipeline.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, compile=args.compile, chat_roles=args.chat_roles, **options
    )


def generate(args: argparse.Namespace) -> int:
    """Text (+ --image) -> N images saved as DIR/image_{i}.png. Several prompts (arguments and
    --prompts-file) are drawn in batches of up to MAX_IMAGES_PER_PROMPT images, as
    DIR/prompt_{p}/image_{i}.png, with DIR/prompts.txt saying which prompt is which.
    DIR/settings.json records the prompts and settings, the seed included (drawn when not given)."""
    prompts = list(args.prompt) + (_read_prompts(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise PromptError("no prompt was given; give one as an argument or a file of them with --prompts-file")
    check_num_images(args.num_images)
    check_output_folder(args.out)
    pipe = _pipeline(
        args,
        prompts,
        cfg_scale=args.cfg_scale,
        image_cfg_scale=args.image_cfg_scale,
        cfg_plausibility=args.cfg_plausibility,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    seed = _seed(args)
    per_batch = MAX_IMAGES_PER_PROMPT // args.num_images
    batches = [prompts[i : i + per_batch] for i in range(0, len(prompts), per_batch)]
    out, images = Path(args.out), []
    codes = pipe.processor.num_gen_tokens
    with tqdm(total=len(batches) * codes, desc="drawing", unit="code", file=sys.stderr) as bar:
        for b, batch in enumerate(batches):
            for event in pipe.stream(
                batch,
                mode="images",
                images=args.image,
                num_images=args.num_images,
                cfg_scale=args.cfg_scale,
                image_cfg_scale=args.image_cfg_scale,
                cfg_plausibility=args.cfg_plausibility,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                seed=(seed + b) % (MAX_SEED + 1),
            ):
                if isinstance(event, ImageProgress) and event.row == 0:
                    bar.update(b * codes + event.done - bar.n)
                elif isinstance(event, Done):
                    images += [im for r in event.results for im in r.images]
    n = args.num_images  # each image's file within --out: one folder per prompt when there are several
    names = [
        Path(f"image_{k % n}.png") if len(prompts) == 1 else Path(f"prompt_{k // n}", f"image_{k % n}.png")
        for k in range(len(images))
    ]
    with output_set(out) as tmp:
        for name, image in zip(names, images):
            save_image(image, tmp / name)
        if len(prompts) > 1:
            write_text(
                tmp / "prompts.txt", "".join(f"prompt_{p}\t{_one_line(prompt)}\n" for p, prompt in enumerate(prompts))
            )
        _write_settings(
            tmp,
            args,
            pipe,
            seed,
            prompts=prompts,
            images=[str(i) for i in args.image],
            num_images=args.num_images,
            top_k=args.top_k,
            top_p=args.top_p,
            seeds=f"seed + batch number, batches of up to {per_batch} prompts",
        )
    for name in names:
        print(out / name)
    return 0


def _seed(args: argparse.Namespace) -> int:
    """--seed, or one drawn now: every run can be repeated from its settings.json."""
    return args.seed if args.seed is not None else secrets.randbelow(MAX_SEED + 1)


def run_settings(args: argparse.Namespace, pipe: JanusLikePipeline, seed: int, **more) -> dict:
    """What it takes to repeat a command's run: the model, the seed, the guidance resolved to the
    model's default (and the image guidance to 1, for commands that take it), the temperature, `more`."""
    settings = {
        "model": args.model or "(embedded default model)",
        "seed": seed,
        "cfg_scale": pipe.default_cfg_scale if args.cfg_scale is None else args.cfg_scale,
    }
    if hasattr(args, "image_cfg_scale"):
        settings["image_cfg_scale"] = 1.0 if args.image_cfg_scale is None else args.image_cfg_scale
    if hasattr(args, "cfg_plausibility"):
        plausibility = args.cfg_plausibility
        settings["cfg_plausibility"] = pipe.default_cfg_plausibility if plausibility is None else plausibility
    return {**settings, "temperature": args.temperature, **more}


def _write_settings(folder: Path, args: argparse.Namespace, pipe: JanusLikePipeline, seed: int, **more) -> None:
    write_json(folder / "settings.json", run_settings(args, pipe, seed, **more), indent=2)


def _one_line(text: str) -> str:
    """Backslash, tab and newline escaped (as in tab-separated files), so a prompt stays on its line."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _read_prompts(path: str) -> list[str]:
    """One prompt per line of a UTF-8 text file; blank lines are skipped. Only a regular file: a FIFO
    or a device would block or never end."""
    if Path(path).exists() and not Path(path).is_file():
        raise PromptError(
            f"--prompts-file {path} is not a regular file (a pipe, device or folder); give a text "
            "file with one prompt per line"
        )
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PromptError(f"--prompts-file {path}: cannot read it as UTF-8 text ({e})") from e
    return [line.strip() for line in lines if line.strip()]


def chat(args: argparse.Namespace) -> int:
    """Text (+ --image) -> the answer, streamed to stdout with its ends stripped like `pipe.chat`'s."""
    pipe = _pipeline(
        args,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    pending, started = "", False
    for event in pipe.stream(
        args.prompt,
        mode="chat",
        images=args.image,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    ):
        if isinstance(event, TextDelta):
            pending = pending + event.text if started else event.text.lstrip()
            started = started or bool(pending)
            shown = pending.rstrip()  # trailing whitespace waits: it is printed only if more text follows
            print(shown, end="", flush=True)
            pending = pending[len(shown) :]
    print()
    return 0


def interleave(args: argparse.Namespace) -> int:
    """Text -> text and images, written as DIR/index.md and DIR/index.html with DIR/image_{i}.png,
    and DIR/settings.json (the seed included, drawn when not given)."""
    check_output_folder(args.out)
    pipe = _pipeline(
        args,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        max_images=args.max_images,
        cfg_scale=args.cfg_scale,
        cfg_plausibility=args.cfg_plausibility,
        temperature=args.temperature,
        image_temperature=args.image_temperature,
    )
    seed = _seed(args)
    events = pipe.stream(
        args.prompt,
        mode="interleave",
        seed=seed,
        max_new_tokens=args.max_new_tokens,
        max_images=args.max_images,
        cfg_scale=args.cfg_scale,
        cfg_plausibility=args.cfg_plausibility,
        temperature=args.temperature,
        image_temperature=args.image_temperature,
    )
    with tqdm(desc="writing", unit="tok", file=sys.stderr) as bar:
        for event in events:
            if isinstance(event, (TextDelta, ImageProgress)):
                bar.update(1)
            elif isinstance(event, ImageDone):
                bar.set_postfix(images=event.index + 1)
            elif isinstance(event, Done):
                parts = event.results[0].parts
    with output_set(args.out) as tmp:
        write_interleaved(parts, tmp)
        _write_settings(
            tmp,
            args,
            pipe,
            seed,
            prompt=args.prompt,
            max_new_tokens=args.max_new_tokens,
            max_images=args.max_images,
            image_temperature=args.temperature if args.image_temperature is None else args.image_temperature,
        )
    print(Path(args.out) / "index.md")
    return 0


def write_interleaved(parts: list, folder: Path) -> None:
    """Save the images and an index.md / index.html showing text and images in order. The model's
    text is shown, never run: HTML escaped in both, link and image brackets escaped in markdown."""
    md, body, n = [], [], 0
    for part in parts:
        if isinstance(part, Image.Image):
            name = f"image_{n}.png"
            save_image(part, folder / name)
            md.append(f"![image {n}]({name})")
            body.append(f'<p><img src="{name}" alt="image {n}"{_shown_size(part)}></p>')
            n += 1
        elif part.strip():
            md.append(_markdown_text(part.strip()))
            body.append(f"<p>{html.escape(part.strip())}</p>")
    write_text(folder / "index.md", "\n\n".join(md) + "\n")
    write_text(
        folder / "index.html",
        '<!doctype html>\n<meta charset="utf-8">\n<title>janus-like</title>\n'
        "<style>p { white-space: pre-wrap } img { image-rendering: pixelated }</style>\n" + "\n".join(body) + "\n",
    )


def _shown_size(image: Image.Image) -> str:
    """An <img>'s width and height: small images enlarged by a whole factor (sharp, by the page's
    `image-rendering: pixelated`), as the demo shows them."""
    factor = display_factor(image.size)
    return f' width="{image.width * factor}" height="{image.height * factor}"'


def _markdown_text(text: str) -> str:
    """Model text for index.md: markdown formatting kept, but no raw HTML (escaped as entities) and
    no links or images of its own (brackets escaped), so it cannot fetch, run or fake an image."""
    return re.sub(r"([\\\[\]])", r"\\\1", html.escape(text, quote=False))
