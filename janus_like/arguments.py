"""Command-line arguments that several commands share, defined once; argparse only, so that the
command line's --help stays fast."""

from __future__ import annotations

import argparse


def port(text: str) -> int:
    """A TCP port number (an argparse type: anything else is a usage error, exit 2)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give a whole number from 1 to 65535")
    return int(text)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Where the model comes from and how it runs: every command that loads one, `serve` too."""
    p.add_argument(
        "--model",
        default=None,
        help="model directory or hub id (default: the embedded default model, a tiny shapes-world toy)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cuda if available, else cpu)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decode step (CUDA graphs): slow first call, then fast; pays off on a GPU "
        "for many or long generations (default: off)",
    )
    p.add_argument(
        "--chat-roles",
        default=None,
        help="the chat roles of a DeepSeek-layout checkpoint: janus-pro (<|User|> / <|Assistant|>), janus-1.3b or "
        "janusflow (User / Assistant) (default: told from the checkpoint's folder or hub name, else janus-pro)",
    )
