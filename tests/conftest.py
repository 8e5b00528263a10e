import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from janus_like.testing import shape_image, tiny_model  # noqa: E402


@pytest.fixture
def umask() -> int:
    """The process umask: what mode plain open and mkdir give new files (0o666 & ~umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture
def tiny():
    """A fresh tiny random model and its processor (eval mode, seed 0)."""
    return tiny_model(seed=0)


@pytest.fixture
def records():
    """One record of each task kind, with in-memory images."""
    return [
        {"task": "understanding", "messages": [
            {"role": "user", "content": [{"type": "image", "image": shape_image()},
                                         {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]}]},
        {"task": "generation", "prompt": "a red circle", "image": shape_image()},
        {"task": "interleaved", "segments": [
            {"type": "text", "text": "A red circle:"}, {"type": "image", "image": shape_image()},
            {"type": "text", "text": "and a blue square:"},
            {"type": "image", "image": shape_image("square", "blue")}]},
        {"task": "text", "text": "plain text for language retention"},
    ]
