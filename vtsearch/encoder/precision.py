"""How the encoder computes: float32, bfloat16 (the whole model cast), or float16 autocast.

On a CPU with bfloat16 instructions (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)
the model cast to bfloat16 encodes 2-4x faster than float32 (ViT-B-32: ~37 against ~17
images/s on 2 cores); on CPUs without them bfloat16 is emulated and slower, so ``auto``
chooses it only where the CPU reports them. A GPU keeps float16 autocast.

A cast model is checked against itself in float32 on the probe text before it is used
(:data:`BF16_AGREEMENT`), and the index's own probe check (``check_weights``) then holds
it to the vectors the index was built with, so an index never mixes precisions silently.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import PRECISION_CHOICES
from ..errors import VtsearchError

__all__ = ["BF16_AGREEMENT", "CPU_BF16_FLAGS", "cpu_has_bf16", "resolve_precision"]

BF16_AGREEMENT = 0.999  # cosine of the probe vector in bfloat16 to float32; measured >= 0.9999
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU reports native bfloat16 arithmetic (False where it cannot tell)."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_precision(choice: str, device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``auto`` → ``fp16`` (autocast) on a GPU, ``bf16`` on a CPU that has it, else ``fp32``;
    ``fp32`` and ``bf16`` as asked."""
    if choice not in PRECISION_CHOICES:
        raise VtsearchError(f"unknown precision {choice!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_bf16(cpuinfo) else "fp32"
