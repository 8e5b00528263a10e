"""`janus-like` command line.

Each sub-command's work lives beside the code it drives (generation, training, checkpoint); this
module only parses arguments and turns user errors into one line on stderr and exit status 2. It
imports no torch, transformers or gradio: `--help`, `--version` and usage errors answer at once,
and a command's module is imported only when that command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from . import __version__
from .arguments import add_model_arguments, port
from .errors import JanusLikeError
from .evaluation import EVALUATIONS
from .generation.settings import (
    MAX_IMAGES_PER_PROMPT,
    MAX_INTERLEAVED_IMAGES,
    MAX_SCALE,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
)
from .serving import commands as serve_commands

OUT_HELP = "output folder (default: %(default)s); the files the previous run wrote there are replaced, nothing else"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the rule for every user error here)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_sampling(
    p: argparse.ArgumentParser,
    temperature: float,
    *,
    guidance: bool = False,
    top: bool = False,
    seed: int | None = None,
) -> None:
    """The sampling flags, defined once for every command that samples: temperature, seed and,
    where asked, image guidance (--cfg-scale, --cfg-plausibility) and top-k / top-p."""
    if guidance:
        p.add_argument(
            "--cfg-scale",
            type=float,
            default=None,
            help=f"classifier-free guidance weight of image codes, 0 to {MAX_SCALE:g}; 1 turns it off "
            "(default: the model's own, else 5.0)",
        )
        p.add_argument(
            "--cfg-plausibility",
            type=float,
            default=None,
            help="draw only image codes the prompt gives at least this share of its top probability, "
            "0 to 1 (default: the model's own, else 0: plain guidance, as Janus)",
        )
    p.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"sampling temperature: 0 (greedy) or {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} (default: %(default)s)",
    )
    if top:
        p.add_argument(
            "--top-k",
            type=int,
            default=None,
            help="sample among the k likeliest tokens only, k >= 1 (default: all tokens)",
        )
        p.add_argument(
            "--top-p",
            type=float,
            default=None,
            help="sample among the likeliest tokens that make up this much probability, in (0, 1] "
            "(default: all tokens)",
        )
    p.add_argument(
        "--seed",
        type=int,
        default=seed,
        help="random seed, 0 to 2**63-1 (default: %(default)s)"
        if seed is not None
        else "random seed, 0 to 2**63-1 (default: a new random one each run; --out folders record it in settings.json)",
    )


def _add_max_new_tokens(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--max-new-tokens", type=int, default=default, help="text tokens to write at most, >= 1 (default: %(default)s)"
    )


def _image_guidance_needs_images(args: argparse.Namespace) -> str | None:
    """--image-cfg-scale weighs the input images, so without --image it is a mistake."""
    if args.image_cfg_scale is not None and not args.image:
        return "--image-cfg-scale weighs the input images; give them with --image (or drop --image-cfg-scale)"
    return None


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text (+ images) -> images")
    p.add_argument("prompt", nargs="*", help="one prompt, or several drawn in one batch")
    add_model_arguments(p)
    p.add_argument(
        "--prompts-file",
        default=None,
        help=f"more prompts, one per line (drawn in batches of up to {MAX_IMAGES_PER_PROMPT} images; "
        "seeds count up per batch) (default: none)",
    )
    p.add_argument(
        "--image", action="append", default=[], help="input image for edits/variations, repeatable (default: none)"
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=4,
        help=f"images per prompt, 1 to {MAX_IMAGES_PER_PROMPT} (default: %(default)s)",
    )
    _add_sampling(p, 1.0, guidance=True, top=True)
    p.add_argument(
        "--image-cfg-scale",
        type=float,
        default=None,
        help=f"with --image: InstructPix2Pix's weight of the input images, 0 to {MAX_SCALE:g} "
        "(default: 1, no separate term)",
    )
    p.add_argument("--out", default="out", help=OUT_HELP)
    p.set_defaults(handler="janus_like.commands:generate", check=_image_guidance_needs_images)


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="text (+ images) -> text")
    p.add_argument("prompt", help="the question")
    add_model_arguments(p)
    p.add_argument("--image", action="append", default=[], help="image to ask about, repeatable (default: none)")
    _add_max_new_tokens(p, 256)
    _add_sampling(p, 0.0, top=True)
    p.set_defaults(handler="janus_like.commands:chat")


def add_interleave(sub) -> None:
    p = sub.add_parser("interleave", help="text -> interleaved text and images")
    p.add_argument("prompt", help="what to write and draw")
    add_model_arguments(p)
    _add_max_new_tokens(p, 512)
    p.add_argument(
        "--max-images",
        type=int,
        default=4,
        help=f"images the answer may draw, 0 to {MAX_INTERLEAVED_IMAGES} (default: %(default)s)",
    )
    _add_sampling(p, 1.0, guidance=True)
    p.add_argument(
        "--image-temperature",
        type=float,
        default=None,
        help="the images' own sampling temperature, 0 (greedy) or "
        f"{MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}; with --temperature 0, greedy words around drawn images "
        "(default: --temperature)",
    )
    p.add_argument("--out", default="out", help=OUT_HELP)
    p.set_defaults(handler="janus_like.commands:interleave")


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="Gradio demo in the browser")
    add_model_arguments(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on: 127.0.0.1 serves this machine only, 0.0.0.0 every interface, "
        "without authentication (default: %(default)s)",
    )
    p.add_argument("--port", type=port, default=7860, help="TCP port, 1 to 65535 (default: %(default)s)")
    p.add_argument(
        "--allow-special-tokens",
        action="store_true",
        help="let typed control tokens such as <begin_of_image> act as tokens (default: they stay text)",
    )
    p.set_defaults(handler="janus_like.demo:demo_command")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train from a YAML config (also under accelerate launch / torchrun)")
    p.add_argument("config", help="the training config (YAML)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="resume from this checkpoint, or from the latest one when no path is given (default: start afresh)",
    )
    p.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip and count bad records instead of stopping (default: stop at the first)",
    )
    p.add_argument("--check-data", action="store_true", help="validate the whole dataset and exit (default: off)")
    p.set_defaults(handler="janus_like.training.commands:train")


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a DeepSeek or transformers Janus checkpoint to this package's format")
    p.add_argument("src", help="the checkpoint directory or hub id to convert")
    p.add_argument("dst", help="a new (or empty) directory to write")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype to write (default: the checkpoint's own)",
    )
    p.set_defaults(handler="janus_like.convert:convert_command")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluations: " + ", ".join(EVALUATIONS))
    suites = p.add_subparsers(
        dest="suite", required=True, parser_class=_Parser, metavar="NAME", help="the evaluation to run"
    )
    for name, evaluation in EVALUATIONS.items():
        q = suites.add_parser(name, help=evaluation.help)
        add_model_arguments(q)
        evaluation.add_arguments(q)
        _add_sampling(q, 1.0, guidance=True, seed=0)
        q.add_argument("--out", default=f"out/eval_{name}", help=OUT_HELP)
        q.set_defaults(handler=evaluation.handler)


# One registration per sub-command: it adds its parser to `sub` and sets `handler` ("module:function",
# imported only when the command runs) and, optionally, `check` (args -> a usage error message or None).
COMMANDS: list[Callable] = [
    add_generate,
    add_chat,
    add_interleave,
    add_demo,
    add_train,
    add_convert,
    add_eval,
    serve_commands.add_parser,
]


def _version() -> str:
    """The installed distribution's version (the source tree's own when it is not installed)."""
    try:
        return importlib.metadata.version("janus_like")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="janus-like",
        description="Generate, chat, interleave, demo, train, convert and evaluate "
        "Janus-like models; COMMAND --help lists a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks (default: one line per error)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in COMMANDS:
        register(sub)
    return parser


def _handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int | None]:
    """Import the sub-command's implementation only when it runs (keeps `--help` fast)."""
    module, function = args.handler.split(":")
    return getattr(importlib.import_module(module), function)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse, then run the command's own check of how its options combine (a usage error: exit 2)."""
    args = build_parser().parse_args(argv)
    problem = args.check(args) if getattr(args, "check", None) else None
    if problem:
        _Parser(prog=f"janus-like {args.command}").error(problem)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2), already printed
        return e.code
    try:
        with _sigterm_interrupts():
            return _handler(args)(args) or 0
    except JanusLikeError as e:
        if args.debug:
            traceback.print_exc()
        print(f"janus-like {args.command}: {e}", file=sys.stderr)
        return 2
    except (ImportError, ModuleNotFoundError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"janus-like {args.command}: not available in this installation ({e})", file=sys.stderr)
        return 2
    except OSError as e:  # a file the user named cannot be read or written (a full disk, permissions)
        if args.debug:
            traceback.print_exc()
        print(f"janus-like {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"janus-like {args.command}: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a job scheduler, torchrun stopping its workers) interrupts like Ctrl-C, so the
    clean-ups that remove half-written output run; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
