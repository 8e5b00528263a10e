"""`janus-like` command line (DESIGN.md §7).

Each sub-command's work lives beside the code it drives (generation, training, checkpoint); this
module only parses arguments and turns user errors into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import traceback

from .errors import JanusLikeError
from .serving import commands as serve_commands


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model directory or hub id (default: the embedded default model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (CUDA graphs): slow first call, then fast; pays off on a GPU "
                        "for many or long generations")


OUT_HELP = "output folder (default: out); the files the previous run wrote there are replaced, nothing else"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the rule for every user error here)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="janus-like", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("generate", help="text (+ images) -> images")
    p.add_argument("prompt", nargs="*", help="one prompt, or several drawn in one batch")
    _add_model(p)
    p.add_argument("--prompts-file", default=None,
                   help="more prompts, one per line (drawn in batches of up to 64 images; seeds count up per batch)")
    p.add_argument("--image", action="append", default=[], help="input image for edits/variations (repeatable)")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance (default: the model's own, else 5.0)")
    p.add_argument("--image-cfg-scale", type=float, default=None,
                   help="with --image: InstructPix2Pix's weight of the input images (default 1: no separate term)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default="out", help=OUT_HELP)

    p = sub.add_parser("chat", help="text (+ images) -> text")
    p.add_argument("prompt")
    _add_model(p)
    p.add_argument("--image", action="append", default=[], help="image to ask about (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)

    p = sub.add_parser("interleave", help="text -> interleaved text and images")
    p.add_argument("prompt")
    _add_model(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-images", type=int, default=4)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance (default: the model's own, else 5.0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out", default="out", help=OUT_HELP)

    p = sub.add_parser("demo", help="Gradio demo")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)

    p = sub.add_parser("train", help="train from a YAML config (also under accelerate launch / torchrun)")
    p.add_argument("config")
    p.add_argument("--resume", nargs="?", const="latest", default=None, help="resume from a checkpoint (default: latest)")
    p.add_argument("--skip-bad-records", action="store_true", help="skip and count bad records instead of stopping")
    p.add_argument("--check-data", action="store_true", help="validate the whole dataset and exit")

    p = sub.add_parser("convert", help="convert a DeepSeek or transformers Janus checkpoint to this package's format")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])

    p = sub.add_parser("eval", help="evaluations")
    p.add_argument("suite", choices=["shapes"])
    _add_model(p)
    p.add_argument("--num-scenes", type=int, default=None, help="first N scenes of the seeded order (default: all 45)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance (default: the model's own, else 5.0)")
    p.add_argument("--image-cfg-scale", type=float, default=None, help="image guidance of the edit section")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/eval_shapes")

    serve_commands.add_parser(sub)
    return parser


def _handler(command: str):
    """Import the sub-command's implementation only when it runs (keeps `--help` fast)."""
    if command in ("generate", "chat", "interleave"):
        from .generation import commands
        return getattr(commands, command)
    if command == "train":
        from .training.commands import train
        return train
    if command == "convert":
        from .checkpoint.convert import convert_command
        return convert_command
    if command == "demo":
        from .demo import demo_command
        return demo_command
    if command == "eval":
        from .evaluation import eval_command
        return eval_command
    if command == "serve":
        return serve_commands.serve
    raise JanusLikeError(f"unknown command {command!r}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code
    try:
        with _sigterm_interrupts():
            return _handler(args.command)(args) or 0
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
