"""Device and dtype choice, in one place."""

from __future__ import annotations

import torch

from shared.settings import DeviceName


def resolve_device(name: DeviceName | str) -> torch.device:
    name = DeviceName(name)
    if name is DeviceName.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name is DeviceName.CUDA and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name.value)


def generation_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (as the paper's A1111 set-up runs SD 1.5), fp32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32
