"""Train a small byte-level BPE text tokenizer (Hugging Face `tokenizers`) for a composed model.

The result is a transformers fast tokenizer directory with the special tokens janus_like needs
(BOS, EOS, pad and the image tokens of janus_like.testing), so `AutoTokenizer.from_pretrained`
and `JanusLikeProcessor` accept it directly.

Text comes from plain .txt files (one document per line) and/or training JSONL (docs/training.md)
(every text field: prompts, messages, interleaved text segments, text records).

    python tokenizers/train_text.py --files data/*.jsonl notes.txt --vocab-size 8000 --out runs/text_tokenizer
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from janus_like import DataError, JanusLikeError
from janus_like.fileio import check_output_folder, output_set
from janus_like.testing import BOS, EOS, IMAGE_TOKENS, PAD
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = [BOS, EOS, PAD, *IMAGE_TOKENS]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet and the special tokens, before any merge


def record_texts(record) -> Iterator[str]:
    """Every string under a `text` or `prompt` key of a JSONL record (nested lists and dicts too)."""
    if isinstance(record, dict):
        for key, value in record.items():
            if key in ("text", "prompt") and isinstance(value, str):
                yield value
            else:
                yield from record_texts(value)
    elif isinstance(record, list):
        for item in record:
            yield from record_texts(item)


def read_texts(files: list[str]) -> Iterator[str]:
    """The texts of .txt (a line each) and .jsonl files; a file that is not UTF-8 text or JSON
    Lines is a DataError naming it (and the line)."""
    for name in files:
        path = Path(name)
        try:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    if path.suffix == ".jsonl":
                        try:
                            yield from record_texts(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}:{number}: not JSON ({e})") from e
                    else:
                        yield line.rstrip("\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from e


def train_tokenizer(files: list[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Byte-level BPE (no unknown tokens: every byte is in the base alphabet) with the special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(read_texts(files), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, additional_special_tokens=list(IMAGE_TOKENS)
    )


def main(argv: list[str] | None = None) -> PreTrainedTokenizerFast:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--files",
        nargs="+",
        required=True,
        help=".txt (one document per line) or .jsonl (training records, docs/training.md)",
    )
    p.add_argument(
        "--vocab-size", type=int, default=8000, help=f"at least {MIN_VOCAB} (the 256 bytes and the special tokens)"
    )
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--out", default="runs/text_tokenizer")
    args = p.parse_args(argv)
    if args.vocab_size < MIN_VOCAB or args.min_frequency < 0:
        p.exit(2, f"train_text: --vocab-size must be at least {MIN_VOCAB} and --min-frequency at least 0\n")
    bad = [f for f in args.files if not Path(f).is_file()]
    if bad:
        p.exit(2, f"train_text: not a file: {', '.join(bad)}\n")
    try:
        check_output_folder(args.out)
        tokenizer = train_tokenizer(args.files, args.vocab_size, args.min_frequency)
    except (JanusLikeError, OSError) as e:
        p.exit(2, f"train_text: {' '.join(str(e).split())}\n")
    # the tokenizer's files join whatever else --out holds (a corpus, notes), replacing only a former run's
    with output_set(args.out) as tmp:
        tokenizer.save_pretrained(tmp)
    sample = next(read_texts(args.files), "")
    print(
        f"vocabulary {len(tokenizer)} tokens; {len(sample)} characters of the first text -> "
        f"{len(tokenizer.encode(sample, add_special_tokens=False))} tokens; wrote {args.out}"
    )
    return tokenizer


if __name__ == "__main__":
    main()
