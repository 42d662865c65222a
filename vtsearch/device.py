"""The one place where the compute device is chosen.

torch is imported when a device is resolved, not with this module: the CLI offers
``DEVICE_CHOICES`` in ``--help``, which must not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DeviceUnavailableError, VtsearchError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if choice not in DEVICE_CHOICES:
        raise VtsearchError(f"unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "cuda":
        raise DeviceUnavailableError("CUDA was asked for, but no CUDA GPU is available", device=choice)
    return torch.device("cpu")
