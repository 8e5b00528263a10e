"""`janus-like serve`: its arguments, and loading the model and running the HTTP server.

Only argparse is imported at module level: FastAPI, uvicorn and torch load when the server starts,
so that `janus-like --help` stays fast."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from ..arguments import add_model_arguments, port
from ..errors import SettingsError

API_KEY_ENV = "JANUS_LIKE_API_KEY"
MAX_BATCH, MAX_QUEUE, MAX_BODY_MB = 4096, 100_000, 1024  # upper ends of the accepted ranges


def add_parser(subparsers) -> None:
    """Register `serve` and its arguments on the CLI's sub-command parsers."""
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server: chat, image generation and edits, interleaved text and images"
    )
    add_model_arguments(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
    )
    p.add_argument("--port", type=port, default=8000, help="TCP port, 1 to 65535 (default: %(default)s)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help=f"KV-cache rows shared by the requests decoding together (a guided image takes 2), "
        f"1-{MAX_BATCH} (default: 32)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help=f"requests waiting beyond the batch before new ones get 429, 0-{MAX_QUEUE} (default: 64)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV}, else no key); "
        "prefer the variable: a command line is visible to other users",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        help="the model id clients name in requests (default: the --model folder's name, or janus-like-default)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=32,
        help=f"largest request body in MiB, images included; larger gets 413, (0, {MAX_BODY_MB}] (default: 32)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="largest input image in pixels (width × height); larger gets 413, >= 1 (default: 16,777,216 = 4096²)",
    )
    p.add_argument(
        "--allow-special-tokens",
        action="store_true",
        help="let special-token strings typed in messages (<begin_of_image>, …) act as those tokens "
        "(default: off, they are plain text)",
    )
    p.set_defaults(handler="janus_like.serving.commands:serve")


def serve(args: argparse.Namespace) -> int:
    """Check the arguments (before any weights load), load the model, serve until interrupted."""
    _check(args)
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError(f"{e}; install the server's dependencies with: pip install 'janus_like[serve]'") from e

    from ..commands import load_pipeline
    from .server import DEFAULT_MODEL_ID, ServerSettings, create_app

    model_id = args.served_model_name or _model_id(args.model, DEFAULT_MODEL_ID)
    settings = ServerSettings(
        model_id=model_id,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        api_key=args.api_key or None,
        max_body_bytes=int(args.max_body_mb * 2**20),
        allow_special_tokens=args.allow_special_tokens,
    )
    if args.max_image_pixels is not None:
        settings.max_image_pixels = args.max_image_pixels
    pipeline = load_pipeline(args, max_batch=args.max_batch)
    if not settings.api_key and not _loopback(args.host):
        print(
            f"janus-like serve: warning: listening on {args.host} without an API key (--api-key or "
            f"${API_KEY_ENV}); anyone who reaches this address can use the server",
            file=sys.stderr,
        )
    uvicorn.run(create_app(pipeline, settings), host=args.host, port=args.port, log_level="info")
    return 0


def _check(args: argparse.Namespace) -> None:
    """Each argument inside its range, named in the error."""
    if not 1 <= args.max_batch <= MAX_BATCH:
        raise SettingsError(f"--max-batch {args.max_batch} is not accepted; give an integer in [1, {MAX_BATCH}]")
    if not 0 <= args.max_queue <= MAX_QUEUE:
        raise SettingsError(f"--max-queue {args.max_queue} is not accepted; give an integer in [0, {MAX_QUEUE}]")
    if not 0 < args.max_body_mb <= MAX_BODY_MB:
        raise SettingsError(f"--max-body-mb {args.max_body_mb:g} is not accepted; give a number in (0, {MAX_BODY_MB}]")
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise SettingsError(f"--max-image-pixels {args.max_image_pixels} is not accepted; give an integer >= 1")
    if args.api_key is not None and args.api_key.strip() != args.api_key:
        raise SettingsError("--api-key has leading or trailing whitespace; give the key alone")


def _model_id(model: str | None, default: str) -> str:
    """What clients call the model: the folder's (or hub id's) last part; `default` for the embedded one."""
    return default if model is None else Path(model.rstrip("/")).name or model


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
