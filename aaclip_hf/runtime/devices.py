"""Devices and inference dtypes shared by every entry point (`--device`, `--dtype`).

AA-CLIP's reference runs fp32 everywhere. Half precision roughly halves weight memory and
bandwidth and, on GPUs with tensor cores, multiplies matmul throughput; on a CPU without native
bf16 instructions (no AVX512-BF16/AMX) bf16 is emulated and usually *slower* than fp32, so the
default stays fp32 on CPU and `auto` picks bf16 only on CUDA cards that support it.
The whole model is cast (weights, stored anchors, scoring head), like
`from_pretrained(dtype=...)`; outputs come back in that dtype.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from ..errors import InvalidInputError


__all__ = [
    "resolve_device",
    "DTYPE_CHOICES",
    "resolve_dtype",
    "dtype_supported",
    "add_dtype_argument",
    "cast_for_inference",
]

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_ALIASES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def dtype_supported(dtype: torch.dtype, device: str | torch.device) -> bool:
    """Whether the ops AA-CLIP needs (linear, layer norm, softmax, conv) run in `dtype` on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if dtype == torch.bfloat16:
            return torch.cuda.is_bf16_supported()
        return True
    try:
        x = torch.ones(2, 4, 4, dtype=dtype, device=device)
        torch.nn.functional.layer_norm(x @ x, (4,)).softmax(-1)
        torch.nn.functional.conv2d(x[:, None], torch.ones(1, 1, 1, 3, dtype=dtype, device=device))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """Map a `--dtype` value to a torch dtype for `device`, with a clear error if unusable.

    `None`/`"auto"`: fp32 on CPU (the reference precision; bf16 is emulated on most CPUs),
    bf16 on CUDA when the card supports it, else fp16.
    """
    device = torch.device(device)
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        key = _ALIASES.get(str(name if name is not None else "auto").lower())
        if key is None:
            raise InvalidInputError(f"--dtype must be one of {DTYPE_CHOICES} (or bf16/fp16/fp32), got {name!r}")
        if key == "auto":
            if device.type == "cuda" and torch.cuda.is_available():
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32
        dtype = getattr(torch, key)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InvalidInputError(f"--dtype must be a floating dtype among float32/bfloat16/float16, got {dtype}")
    if dtype != torch.float32 and not dtype_supported(dtype, device):
        raise InvalidInputError(
            f"--dtype {str(dtype).removeprefix('torch.')} is not supported on device {device}; use float32"
        )
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn("float16 on CPU is slow and overflow-prone; bfloat16 or float32 is preferred", stacklevel=2)
    return dtype


def add_dtype_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """The shared `--dtype` flag."""
    parser.add_argument(
        "--dtype",
        default=default,
        choices=DTYPE_CHOICES,
        help="inference precision; auto = float32 on CPU, bfloat16 on CUDA cards that support it (else float16)",
    )


def cast_for_inference(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast the whole model (weights and buffers, including stored anchors) and put it in eval mode."""
    return model.to(dtype=dtype).eval()


def resolve_device(device: str | None = None) -> torch.device:
    """`None`/`"auto"`: CUDA if available, else Apple MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)
