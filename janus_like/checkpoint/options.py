"""Loading options every layout accepts alike: the weights' dtype (a name or a torch dtype) and the
device, checked here once so that a bad value is a SettingsError whatever the checkpoint's layout."""

from __future__ import annotations

import argparse

import torch

from ..configuration import DTYPES
from ..errors import SettingsError


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A floating torch dtype, or None (keep the checkpoint's); names as in `configuration.DTYPES`."""
    if dtype is None or dtype == "auto":  # transformers' spelling of "the checkpoint's dtype"
        return None
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise SettingsError(f"dtype={dtype!r} is not a floating-point weight dtype; accepted: None or 'auto' (the "
                        f"checkpoint's), {', '.join(map(repr, DTYPES))} or a floating torch dtype")


def available_devices() -> list[str]:
    """The devices this machine has, as torch spells them."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str | int | torch.device | None) -> str | int | torch.device | None:
    """`device` unchanged if this machine has it; otherwise a SettingsError listing those it has."""
    if device is not None and not _present(device):
        raise SettingsError(f"device={device!r} is not a device of this machine; available: "
                            f"{', '.join(available_devices())}")
    return device


def device_argument(text: str) -> str:
    """An argparse type for scripts' --device: a device this machine has, checked before any work."""
    try:
        return check_device(text)
    except SettingsError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _present(device: str | int | torch.device) -> bool:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):  # not a device name, or an index with no accelerator
        return False
    if parsed.type == "cpu":
        return True
    backend = getattr(torch, parsed.type, None)  # torch.cuda, torch.mps, torch.xpu, …
    count = backend.device_count() if backend is not None and backend.is_available() else 0
    return (parsed.index or 0) < count
