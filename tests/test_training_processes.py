"""Training across processes: SIGKILL then --resume, and two DDP processes under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from janus_like.testing import tiny_model

from test_training import reset_accelerate, run, write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}


def train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "janus_like.cli", "train", str(config), *extra]


def losses(run_dir: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run_dir / "out" / "metrics.json").read_text())["history"]]


def test_sigkill_and_resume_gives_the_uninterrupted_losses(tmp_path):
    write_dataset(tmp_path)
    sections = dict(data={"files": [str(tmp_path / "train.jsonl")], "num_workers": 1},
                    schedule={"name": "cosine", "warmup_steps": 3},
                    training={"max_steps": 30, "batch_size": 2, "grad_accum": 2},
                    logging={"save_every": 4, "keep": 2, "tensorboard": False})
    straight = write_config(tmp_path / "straight", **sections)
    killed = write_config(tmp_path / "killed", **sections)
    subprocess.run(train_cmd(straight), env=env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(train_cmd(killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tmp_path / "killed" / "out" / "checkpoints"
    deadline = time.time() + 240
    while not (root / "step-00000008").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "out" / "metrics.json").exists(), "the run finished before it was killed"
    assert (root / "step-00000008").exists()

    result = subprocess.run(train_cmd(killed, "--resume"), env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout + result.stderr
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "straight")) == 30


SCRIPT = """
import sys
from safetensors.torch import save_file
from janus_like.training.config import load_config
from janus_like.training.trainer import Trainer

trainer = Trainer(load_config(sys.argv[1]))
trainer.fit()
model = trainer.accelerator.unwrap_model(trainer.model)
state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
save_file(state, f"{sys.argv[2]}/rank{trainer.accelerator.process_index}.safetensors")
"""


def test_two_ddp_processes_match_one_process_with_the_global_batch(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "train_and_dump.py").write_text(SCRIPT)
    data = str(tmp_path / "train.jsonl")
    sections = dict(data={"files": [data]}, training={"max_steps": 5, "batch_size": 2},
                    logging={"save_every": 5, "tensorboard": False}, eval={"files": [data], "every": 5, "batches": 2})
    config = write_config(tmp_path / "ddp", **sections)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "train_and_dump.py"), str(config), str(tmp_path / "ddp")]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1))

    reset_accelerate()
    single, _ = run(tmp_path / "single", **{**sections, "training": {"max_steps": 5, "batch_size": 4}})
    one = single.accelerator.unwrap_model(single.model).state_dict()
    initial = tiny_model(seed=0)[0].state_dict()
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), f"{name} differs between ranks"
        assert torch.allclose(tensor, one[name], atol=2e-5, rtol=1e-4), f"{name}: DDP and one process differ"
    assert not torch.allclose(rank0["gen_head.vision_head.weight"], initial["gen_head.vision_head.weight"], atol=1e-3)
    ddp_losses = losses(tmp_path / "ddp")
    single_losses = losses(tmp_path / "single")
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)
    assert single.state.eval_history[0]["loss"] == pytest.approx(
        json.loads((tmp_path / "ddp" / "out" / "metrics.json").read_text())["eval_history"][0]["loss"], rel=1e-5)
