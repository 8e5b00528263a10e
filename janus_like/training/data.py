"""Training data: an index of JSONL records (docs/ARCHITECTURE.md §6), a task mixture, and micro-batches.

The sample stream is a pure function of the seed and the global sample number, so a run can
resume at any step from one integer, and `n` processes with batch `b` see exactly the samples one
process with batch `n·b` sees (process r takes slice r of every global micro-batch).
"""

from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError, JanusLikeError, SettingsError
from ..layout import IGNORE_INDEX, TASKS, TokenSequence
from ..processor import JanusLikeProcessor
from .packing import collate_packed, collate_padded

MIX_BLOCK = 1000  # the task mixture is exact within every block of this many samples
# bounds on one JSONL record, checked before it is parsed or its images read: a record past them is bad
MAX_RECORD_BYTES = 16 * 2**20  # one line
MAX_RECORD_DEPTH = 16  # nesting of objects and lists (records of every task need at most 5)
MAX_RECORD_ITEMS = 4096  # entries in any one list (messages, content items, segments)
MAX_RECORD_IMAGES = 256  # images in one record


@dataclass(frozen=True)
class RecordRef:
    """Where one record lives: file number, 1-based line and byte offset."""

    file: int
    line: int
    offset: int


def resolve_files(patterns: list[str], base_dir: str | Path) -> list[Path]:
    """Expand paths and globs (relative to the config's folder); every pattern must match a file."""
    files: list[Path] = []
    for pattern in patterns:
        full = Path(pattern) if Path(pattern).is_absolute() else Path(base_dir) / pattern
        matches = sorted(Path(m) for m in glob.glob(str(full))) if glob.has_magic(str(full)) else [full]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise SettingsError(f"data file not found: {full} (from data.files entry {pattern!r})")
        files.extend(matches)
    return files


class DataIndex:
    """Every record of a set of JSONL files, grouped by task. Lines that are not a JSON object of
    a known task, and files with no records, are bad records: fatal, or skipped and counted."""

    def __init__(self, files: list[Path], skip_bad: bool = False, progress: bool = False):
        self.files = files
        self.by_task: dict[str, list[RecordRef]] = {task: [] for task in TASKS}
        self.bad: list[str] = []
        for number, path in enumerate(tqdm(files, desc="indexing data", disable=not progress, unit="file")):
            self._index_file(number, path, skip_bad)

    def _index_file(self, number: int, path: Path, skip_bad: bool) -> None:
        records = 0
        with open(path, "rb") as f:
            offset, line_no = 0, 0
            for raw, size in _lines(f):
                line_no += 1
                start, offset = offset, offset + size
                if raw is not None and not raw.strip():
                    continue
                records += 1
                try:
                    task = parse_record(raw, f"{path}:{line_no}", size).get("task")
                    if task not in TASKS:
                        raise DataError(f"{path}:{line_no}: unknown task {task!r}; accepted: {', '.join(TASKS)}")
                except DataError as e:
                    self._bad(str(e), skip_bad)
                    continue
                self.by_task[task].append(RecordRef(number, line_no, start))
        if records == 0:
            self._bad(f"{path}:1: the file is empty; expected one JSON record per line", skip_bad)

    def _bad(self, message: str, skip_bad: bool) -> None:
        if not skip_bad:
            raise DataError(f"bad record at {message} (use --skip-bad-records to skip such records)")
        self.bad.append(message)

    def __len__(self) -> int:
        return sum(len(refs) for refs in self.by_task.values())

    def where(self, ref: RecordRef) -> str:
        return f"{self.files[ref.file]}:{ref.line}"

    def read(self, ref: RecordRef) -> dict:
        with open(self.files[ref.file], "rb") as f:
            f.seek(ref.offset)
            raw = f.readline(MAX_RECORD_BYTES + 1)
            return parse_record(raw if len(raw) <= MAX_RECORD_BYTES else None, self.where(ref), len(raw))


def _lines(f, chunk: int = 2**20):
    """(line, its size in bytes) for each line of a binary file; a line longer than MAX_RECORD_BYTES is
    (None, its size), read past in chunks rather than held in memory."""
    while True:
        raw = f.readline(MAX_RECORD_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_RECORD_BYTES:
            yield raw, len(raw)
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = f.readline(chunk)
            if not raw:
                break
            size += len(raw)
        yield None, size


def parse_record(raw: bytes | None, where: str, size: int = 0) -> dict:
    """One JSONL line -> its record, or a DataError naming the line and the bound it breaks
    (`raw` None: the line is `size` bytes, past MAX_RECORD_BYTES)."""
    if raw is None:
        raise DataError(
            f"{where}: the line is {size:,} bytes, more than a record may hold "
            f"(MAX_RECORD_BYTES = {MAX_RECORD_BYTES:,})"
        )
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not valid JSON ({e})") from e
    except RecursionError:
        raise DataError(
            f"{where}: the record is nested too deep to read; accepted: at most "
            f"MAX_RECORD_DEPTH = {MAX_RECORD_DEPTH} levels of objects and lists"
        ) from None
    except ValueError:  # the one ValueError json.loads raises besides JSONDecodeError
        raise DataError(
            f"{where}: a number in the record has more digits than accepted; accepted: at most "
            f"{sys.get_int_max_str_digits():,} digits (Python's limit for integers)"
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    _check_shape(record, where)
    return record


def _check_shape(record: dict, where: str) -> None:
    """Refuse a record past MAX_RECORD_DEPTH, MAX_RECORD_ITEMS or MAX_RECORD_IMAGES before any of its
    text is tokenised or its images read."""
    images, stack = 0, [(record, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_RECORD_DEPTH:
            raise DataError(
                f"{where}: the record is nested {depth} levels deep or more; accepted: at most "
                f"MAX_RECORD_DEPTH = {MAX_RECORD_DEPTH}"
            )
        children = list(value.values()) if isinstance(value, dict) else value
        if isinstance(value, list) and len(value) > MAX_RECORD_ITEMS:
            raise DataError(
                f"{where}: a list in the record has {len(value):,} entries; accepted: at most "
                f"MAX_RECORD_ITEMS = {MAX_RECORD_ITEMS:,}"
            )
        if isinstance(value, dict) and value.get("type") == "image":
            images += 1
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    inputs = record.get("input_images")
    images += (record.get("task") == "generation") + (len(inputs) if isinstance(inputs, list) else 0)
    if images > MAX_RECORD_IMAGES:
        raise DataError(
            f"{where}: the record has {images:,} images; accepted: at most MAX_RECORD_IMAGES = {MAX_RECORD_IMAGES}"
        )


class Mixture:
    """Global sample number -> record. Tasks are drawn in the given ratios (exactly, per block of
    MIX_BLOCK samples, shuffled per block); within a task, records go in a fresh permutation per epoch."""

    def __init__(self, index: DataIndex, mix: dict[str, float] | None, seed: int):
        weights = mix if mix is not None else {t: float(len(r)) for t, r in index.by_task.items()}
        for task, weight in weights.items():
            if weight > 0 and not index.by_task[task]:
                raise SettingsError(f"data.mix.{task} = {weight} but the data files hold no {task} records")
        self.tasks = [t for t in TASKS if weights.get(t, 0) > 0]
        if not self.tasks:
            raise SettingsError("the data files hold no usable records")
        self.index, self.seed = index, seed
        w = np.array([weights[t] for t in self.tasks], dtype=np.float64)
        w = w / w.max()  # huge weights would overflow the sum
        exact = w / w.sum() * MIX_BLOCK
        counts = np.floor(exact).astype(int)
        counts[np.argsort(counts - exact)[: MIX_BLOCK - counts.sum()]] += 1  # largest remainders
        self.block_counts = counts

    @lru_cache(maxsize=4)  # noqa: B019 - a few blocks per mixture, which lives as long as the run
    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Task of each sample in a block, and its rank among that task's samples in the block."""
        tasks = np.repeat(np.arange(len(self.tasks)), self.block_counts)
        np.random.default_rng([self.seed, block]).shuffle(tasks)
        rank = np.zeros_like(tasks)
        for t in range(len(self.tasks)):
            where = tasks == t
            rank[where] = np.arange(where.sum())
        return tasks, rank

    @lru_cache(maxsize=16)  # noqa: B019 - bounded, and the mixture lives as long as the run
    def _permutation(self, task: int, epoch: int) -> np.ndarray:
        n = len(self.index.by_task[self.tasks[task]])
        return np.random.default_rng([self.seed, 1 + task, epoch]).permutation(n)

    def __getitem__(self, sample: int) -> RecordRef:
        block, pos = divmod(sample, MIX_BLOCK)
        tasks, rank = self._block(block)
        t = int(tasks[pos])
        k = block * int(self.block_counts[t]) + int(rank[pos])  # this task's sample number
        refs = self.index.by_task[self.tasks[t]]
        epoch, i = divmod(k, len(refs))
        return refs[int(self._permutation(t, epoch)[i])]


def sample_rng(seed: int, sample: int) -> np.random.Generator:
    """Per-sample randomness (CFG prompt dropout): the same for a sample whatever the process layout."""
    return np.random.default_rng([seed, 1_000_003, sample])


class MicroBatches(torch.utils.data.Dataset):
    """Item i = this process's share of global micro-batch i, tokenised and packed (or padded).

    Bad records (missing or corrupt image, bad fields, too long) are returned as messages with
    file and line, for the trainer to stop on or count; they are never trained on."""

    def __init__(
        self,
        index: DataIndex,
        mixture: Mixture,
        processor: JanusLikeProcessor,
        *,
        batch_size: int,
        world_size: int,
        rank: int,
        max_length: int,
        packing: bool,
        cfg_dropout: float,
        seed: int,
        cfg_image_dropout: float = 0.0,
        row_length: int | None = None,  # packed rows' capacity; default max_length
    ):
        self.index, self.mixture, self.processor = index, mixture, processor
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.row_length = row_length or max_length
        self.max_length, self.packing, self.cfg_dropout, self.seed = max_length, packing, cfg_dropout, seed
        self.cfg_image_dropout = cfg_image_dropout

    def __len__(self) -> int:
        return 2**62

    def samples(self, micro_batch: int) -> range:
        start = (micro_batch * self.world_size + self.rank) * self.batch_size
        return range(start, start + self.batch_size)

    def sequence(self, sample: int) -> TokenSequence:
        """Global sample number -> its token sequence, with this sample's CFG prompt dropout."""
        rng = sample_rng(self.seed, sample)
        drop_prompt = rng.random() < self.cfg_dropout
        return self.load(self.mixture[sample], drop_prompt, drop_prompt and rng.random() < self.cfg_image_dropout)

    def load(self, ref: RecordRef, drop_prompt: bool = False, drop_images: bool = False) -> TokenSequence:
        """One record as a token sequence; a DataError naming file and line if it is bad."""
        where = self.index.where(ref)
        try:
            record = self.index.read(ref)
            drop = drop_prompt and record.get("task") == "generation"
            seq = self.processor.record_to_sequence(
                record, self.index.files[ref.file].parent, drop_prompt=drop, drop_images=drop_images
            )
        except DataError as e:
            raise e if str(e).startswith(where) else DataError(f"{where}: {e}") from e
        except JanusLikeError as e:
            raise DataError(f"{where}: {e}") from e
        if len(seq) > self.max_length:
            raise DataError(f"{where}: the sample has {len(seq)} tokens, more than data.max_length = {self.max_length}")
        if not any(seq.trainable[1:]):  # a row's first token is never scored
            raise DataError(
                f"{where}: the {record['task']} record has nothing to train: no target tokens (an "
                "understanding record needs an assistant turn after the user's)"
            )
        return seq

    def __getitem__(self, micro_batch: int) -> dict:
        seqs, bad = [], []
        for sample in self.samples(micro_batch):
            try:
                seqs.append(self.sequence(sample))
            except DataError as e:
                bad.append(str(e))
        if not seqs:  # every record was bad: a one-token row with no targets keeps the processes in step
            seqs = [TokenSequence(ids=[self.processor.bos_id], modality=[0], trainable=[False])]
        batch = (
            collate_packed(self.processor, seqs, self.row_length)
            if self.packing
            else collate_padded(self.processor, seqs)
        )
        batch["bad"] = bad
        batch["real_tokens"] = sum(len(s) for s in seqs)
        batch["targets"] = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch


def check_all(index: DataIndex, processor: JanusLikeProcessor, max_length: int) -> tuple[int, list[str]]:
    """Read every record (images included); return the number of good records and every problem."""
    problems = list(index.bad)
    dataset = MicroBatches(
        index,
        None,
        processor,
        batch_size=1,
        world_size=1,
        rank=0,
        max_length=max_length,
        packing=False,
        cfg_dropout=0.0,
        seed=0,
    )
    refs = sorted((ref for refs in index.by_task.values() for ref in refs), key=lambda r: (r.file, r.line))
    good = 0
    for ref in tqdm(refs, desc="checking data", unit="record"):
        try:
            dataset.load(ref)
            good += 1
        except DataError as e:
            problems.append(str(e))
    return good, problems


def identity(batch):
    """DataLoader collate for already-built batches (module level, so worker processes can pickle it)."""
    return batch
