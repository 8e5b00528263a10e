"""Serving: continuous batching of many concurrent requests over one static KV cache."""

from .scheduler import RequestStream, RowState, Scheduler, check_max_batch

__all__ = ["RequestStream", "RowState", "Scheduler", "check_max_batch"]
