"""The test suite's thread bound (tests/conftest.py) holds here and in the processes tests start."""

import os
import subprocess
import sys

import torch
from conftest import TEST_THREADS, THREAD_VARIABLES


def test_this_process_uses_the_bound():
    assert torch.get_num_threads() == TEST_THREADS
    assert torch.get_num_interop_threads() == TEST_THREADS


def test_a_subprocess_inherits_the_bound():
    code = f"import os, torch\nprint(*[os.environ.get(v) for v in {THREAD_VARIABLES!r}], torch.get_num_threads())"
    result = subprocess.run(
        [sys.executable, "-c", code], env=os.environ, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == [str(TEST_THREADS)] * (len(THREAD_VARIABLES) + 1)
