import os
import warnings

# One thread per test process, set before torch loads and inherited by every subprocess a test starts
# (CLI runs, torchrun workers, servers): a machine busy with other work then slows the suite in
# proportion, where several processes each spinning a full-width thread pool slowed it tenfold.
TEST_THREADS = 1
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
for variable in THREAD_VARIABLES:
    os.environ[variable] = str(TEST_THREADS)
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")
torch.set_num_threads(TEST_THREADS)
torch.set_num_interop_threads(TEST_THREADS)

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
        {
            "task": "understanding",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": shape_image()}, {"type": "text", "text": "What is this?"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
            ],
        },
        {"task": "generation", "prompt": "a red circle", "image": shape_image()},
        {
            "task": "interleaved",
            "segments": [
                {"type": "text", "text": "A red circle:"},
                {"type": "image", "image": shape_image()},
                {"type": "text", "text": "and a blue square:"},
                {"type": "image", "image": shape_image("square", "blue")},
            ],
        },
        {"task": "text", "text": "plain text for language retention"},
    ]
