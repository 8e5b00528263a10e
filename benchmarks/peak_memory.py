"""Peak memory of a piece of work above the level just before it, for the benchmarks here.

CPU: a sampler thread records the process's resident-set peak; CUDA: torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def measure_peak(work: Callable[[], object], device: str) -> tuple[object, float, float]:
    """Run `work()`; its result, the peak bytes above the level before it, and the seconds it took."""
    import psutil
    import torch

    cuda = device.startswith("cuda")
    process = psutil.Process()
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.0005)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = process.memory_info().rss
        threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    result = work()
    if cuda:
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
    else:
        stop.set()
        extra = max(peak[0], process.memory_info().rss) - base
    return result, extra, time.perf_counter() - start
