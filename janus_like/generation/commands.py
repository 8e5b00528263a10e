"""`janus-like generate | chat | interleave` (DESIGN.md §7): load, run the engine with a
progress bar, write the results (files go to a temporary name first, then are renamed)."""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..errors import PromptError
from ..fileio import check_output_folder, output_set, save_image, write_text
from ..pipeline import JanusLikePipeline, check_prompt
from .events import Done, ImageDone, ImageProgress, TextDelta
from .settings import MAX_IMAGES_PER_PROMPT, MAX_SEED, GenerationSettings, check_num_images


# what a run writes in its --out folder; a new run replaces these (and only these) from an earlier one
GENERATE_OUTPUTS = ("image_*.png", "prompt_*", "prompts.txt")
INTERLEAVE_OUTPUTS = ("image_*.png", "index.md", "index.html")


def _pipeline(args: argparse.Namespace, prompts: list[str] | None = None, **settings) -> JanusLikePipeline:
    """Check the prompt(s) and settings (fast, before any weights are read), then load the model."""
    for prompt in prompts or [args.prompt]:
        check_prompt(prompt)
    GenerationSettings(**{k: v for k, v in settings.items() if v is not None})
    return JanusLikePipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                             compile=args.compile)


def generate(args: argparse.Namespace) -> int:
    """Text (+ --image) -> N images saved as DIR/image_{i}.png. Several prompts (arguments and
    --prompts-file) are drawn in batches of up to MAX_IMAGES_PER_PROMPT images, as
    DIR/prompt_{p}/image_{i}.png, with DIR/prompts.txt saying which prompt is which."""
    prompts = list(args.prompt) + (_read_prompts(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise PromptError("no prompt was given; give one as an argument or a file of them with --prompts-file")
    check_num_images(args.num_images)
    check_output_folder(args.out)
    pipe = _pipeline(args, prompts, cfg_scale=args.cfg_scale, image_cfg_scale=args.image_cfg_scale,
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    per_batch = MAX_IMAGES_PER_PROMPT // args.num_images
    batches = [prompts[i:i + per_batch] for i in range(0, len(prompts), per_batch)]
    out, images = Path(args.out), []
    codes = pipe.processor.num_gen_tokens
    with tqdm(total=len(batches) * codes, desc="drawing", unit="code", file=sys.stderr) as bar:
        for b, batch in enumerate(batches):
            seed = None if args.seed is None else (args.seed + b) % (MAX_SEED + 1)
            for event in pipe.stream(batch, mode="images", images=args.image, num_images=args.num_images,
                                     cfg_scale=args.cfg_scale, image_cfg_scale=args.image_cfg_scale,
                                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=seed):
                if isinstance(event, ImageProgress) and event.row == 0:
                    bar.update(b * codes + event.done - bar.n)
                elif isinstance(event, Done):
                    images += [im for r in event.results for im in r.images]
    n = args.num_images  # each image's file within --out: one folder per prompt when there are several
    names = [Path(f"image_{k % n}.png") if len(prompts) == 1 else Path(f"prompt_{k // n}", f"image_{k % n}.png")
             for k in range(len(images))]
    with output_set(out, GENERATE_OUTPUTS) as tmp:
        for name, image in zip(names, images):
            save_image(image, tmp / name)
        if len(prompts) > 1:
            write_text(tmp / "prompts.txt", "".join(f"prompt_{p}\t{_one_line(prompt)}\n"
                                                    for p, prompt in enumerate(prompts)))
    for name in names:
        print(out / name)
    return 0


def _one_line(text: str) -> str:
    """Backslash, tab and newline escaped (as in tab-separated files), so a prompt stays on its line."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _read_prompts(path: str) -> list[str]:
    """One prompt per line of a UTF-8 text file; blank lines are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PromptError(f"--prompts-file {path}: cannot read it as UTF-8 text ({e})") from e
    return [line.strip() for line in lines if line.strip()]


def chat(args: argparse.Namespace) -> int:
    """Text (+ --image) -> the answer, streamed to stdout."""
    pipe = _pipeline(args, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, seed=args.seed)
    for event in pipe.stream(args.prompt, mode="chat", images=args.image, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed):
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
    print()
    return 0


def interleave(args: argparse.Namespace) -> int:
    """Text -> text and images, written as DIR/index.md and DIR/index.html with DIR/image_{i}.png."""
    check_output_folder(args.out)
    pipe = _pipeline(args, seed=args.seed, max_new_tokens=args.max_new_tokens, max_images=args.max_images,
                     cfg_scale=args.cfg_scale, temperature=args.temperature)
    events = pipe.stream(args.prompt, mode="interleave", seed=args.seed, max_new_tokens=args.max_new_tokens,
                         max_images=args.max_images, cfg_scale=args.cfg_scale, temperature=args.temperature)
    with tqdm(desc="writing", unit="tok", file=sys.stderr) as bar:
        for event in events:
            if isinstance(event, (TextDelta, ImageProgress)):
                bar.update(1)
            elif isinstance(event, ImageDone):
                bar.set_postfix(images=event.index + 1)
            elif isinstance(event, Done):
                parts = event.results[0].parts
    print(write_interleaved(parts, Path(args.out)))
    return 0


def write_interleaved(parts: list, out: Path) -> Path:
    """Save the images and an index.md / index.html showing text and images in order (replacing
    an earlier run's in `out`)."""
    md, body, n = [], [], 0
    with output_set(out, INTERLEAVE_OUTPUTS) as tmp:
        for part in parts:
            if isinstance(part, Image.Image):
                name = f"image_{n}.png"
                save_image(part, tmp / name)
                md.append(f"![image {n}]({name})")
                body.append(f'<p><img src="{name}" alt="image {n}"></p>')
                n += 1
            else:
                md.append(part.strip())
                body.append(f"<p>{html.escape(part.strip())}</p>")
        write_text(tmp / "index.md", "\n\n".join(md) + "\n")
        write_text(tmp / "index.html", "<!doctype html>\n<meta charset=\"utf-8\">\n<title>janus-like</title>\n"
                   + "\n".join(body) + "\n")
    return out / "index.md"
