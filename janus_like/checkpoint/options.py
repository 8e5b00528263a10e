"""Loading options every layout accepts alike: the weights' dtype (a name or a torch dtype) and the
device, checked here once so that a bad value is a SettingsError whatever the checkpoint's layout."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from ..configuration import DTYPES
from ..errors import SettingsError, one_line
from .deepseek import RELEASE_ROLES


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A floating torch dtype, or None (keep the checkpoint's); names as in `configuration.DTYPES`."""
    if dtype is None or dtype == "auto":  # transformers' spelling of "the checkpoint's dtype"
        return None
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise SettingsError(
        f"dtype={dtype!r} is not a floating-point weight dtype; accepted: None or 'auto' (the "
        f"checkpoint's), {', '.join(map(repr, DTYPES))} or a floating torch dtype"
    )


def available_devices() -> list[str]:
    """The devices this machine has, as torch spells them."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str | int | torch.device | None) -> str | int | torch.device | None:
    """`device` unchanged if this machine has it; otherwise a SettingsError listing those it has."""
    if device is not None and not _present(device):
        raise SettingsError(
            f"device={device!r} is not a device of this machine; available: {', '.join(available_devices())}"
        )
    return device


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's
# what every layout's from_pretrained takes (the own format also takes transformers' own options)
LOADING_OPTIONS = (
    "dtype, device, device_map, max_memory, offload_folder, low_cpu_mem_usage, attn_implementation, "
    "chat_roles, check_weights"
)


def resolve_chat_roles(chat_roles: str | Sequence[str] | None) -> tuple[str, str] | None:
    """The (user, assistant) roles the `chat_roles` option names: a release's ("janus-pro", "janus-1.3b",
    "janusflow") or the two role strings themselves; None: the checkpoint's own."""
    if chat_roles is None:
        return None
    if isinstance(chat_roles, str) and chat_roles.lower() in RELEASE_ROLES:
        return RELEASE_ROLES[chat_roles.lower()]
    if (
        isinstance(chat_roles, (tuple, list))
        and len(chat_roles) == 2
        and all(isinstance(role, str) and role.strip() for role in chat_roles)
    ):
        return chat_roles[0], chat_roles[1]
    releases = ", ".join(f"{name!r} ({' / '.join(roles)})" for name, roles in RELEASE_ROLES.items())
    raise SettingsError(
        f"chat_roles={chat_roles!r} is not accepted; accepted: None (the checkpoint's release "
        f"decides), a release: {releases}, or a (user, assistant) pair of non-empty strings"
    )


def check_device_map(device_map: str | dict | None) -> str | dict | None:
    """`device_map` unchanged if it is one of accelerate's strategies, a device this machine has, or a
    {module prefix: device} dict whose devices it has ("disk" offloads); otherwise a SettingsError."""
    if device_map is None or device_map in DEVICE_MAP_STRATEGIES:
        return device_map
    accepted = (
        f"accepted: None, {', '.join(map(repr, DEVICE_MAP_STRATEGIES))}, a device "
        f"({', '.join(available_devices())}) or a dict {{module prefix: device or 'disk'}}"
    )
    if isinstance(device_map, (str, int, torch.device)):
        if not _present(device_map):
            raise SettingsError(
                f"device_map={device_map!r} is neither a placement strategy nor a device of this machine; {accepted}"
            )
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise SettingsError(f"device_map={device_map!r} is not a device map; {accepted}")
    for prefix, target in device_map.items():
        if not isinstance(prefix, str):
            raise SettingsError(f"device_map key {prefix!r} is not a module prefix (a string; '' is the whole model)")
        if target != "disk" and not _present(target):
            raise SettingsError(
                f"device_map[{prefix!r}]={target!r} is not a device of this machine; available: "
                f"{', '.join(available_devices())} or 'disk'"
            )
    return device_map


def set_attention(model, implementation: str, setting: str = "attn_implementation") -> None:
    """Set the decoder's and the vision tower's attention kernel ("sdpa", "eager", "flex_attention",
    "flash_attention_2", …); one that cannot be used here (flash-attn not installed) is a SettingsError."""
    try:
        model.set_attn_implementation(implementation)
    except (ImportError, ValueError) as e:
        raise SettingsError(f"{setting} = {implementation!r} cannot be used here: {one_line(e)}") from e


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
