"""`janus-like train CONFIG.yaml [--resume [PATH]] [--skip-bad-records] [--check-data]`."""

from __future__ import annotations

import argparse
import sys

from ..errors import DataError
from .config import load_config


def train(args: argparse.Namespace) -> int:
    """Train as the config says; or, with --check-data, read every record once and report."""
    config = load_config(args.config)
    if args.check_data:
        return check_data(config)
    from .trainer import Trainer  # heavy imports only when training

    trainer = Trainer(config, resume=args.resume, skip_bad_records=args.skip_bad_records)
    state = trainer.fit()
    if not trainer.accelerator.is_main_process:
        return 0
    last = state.history[-1] if state.history else {}
    print(
        f"trained to step {state.step}: loss {last.get('loss', float('nan')):.4f}; "
        f"{state.real_tokens:,} real tokens; skipped {state.skipped_records} bad records, "
        f"{state.nonfinite_steps} non-finite steps; model in {config.resolve(config.output_dir) / 'final'}"
    )
    return 0


def check_data(config) -> int:
    """Validate the whole training (and eval) data up front: every problem with file and line."""
    from ..processor import JanusLikeProcessor
    from .data import DataIndex, check_all, resolve_files
    from .trainer import build_model

    if config.model.path:  # the tokenizer and config suffice: no weights are loaded
        processor = JanusLikeProcessor.from_pretrained(config.model_location(config.model.path))
    else:
        _, processor = build_model(config)
    context = processor.config.text_config.max_position_embeddings
    config.check_context(context)
    good, problems = 0, []
    for files in (config.data.files, config.eval.files):
        if files:
            index = DataIndex(resolve_files(files, config.base_dir), skip_bad=True, progress=True)
            n, found = check_all(index, processor, config.data.max_length)
            good, problems = good + n, problems + found
    for problem in problems:
        print(f"bad record at {problem}", file=sys.stderr)
    if problems:
        raise DataError(f"{len(problems)} bad records, {good} good; fix them or train with --skip-bad-records")
    print(
        f"all {good} records are good; data.max_length = {config.data.max_length} fits the model's context "
        f"of {context}; stage/trainable/frozen/lora patterns and --resume are checked when training starts"
    )
    return 0
