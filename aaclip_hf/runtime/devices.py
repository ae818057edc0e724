"""Devices and inference dtypes shared by every entry point (`--device`, `--dtype`).

AA-CLIP's reference runs fp32 everywhere. Half precision roughly halves weight memory and bandwidth and, on GPUs
with tensor cores, multiplies matmul throughput. On a CPU, bf16 pays off only with native bf16 instructions
(AVX512-BF16 dot products, AMX tiles; on Arm the BF16 extension): without them it is emulated and usually *slower*
than fp32. So `--dtype auto` on a CPU (`choose_cpu_dtype`) picks bf16 only where the CPU reports native bf16 *and*
a bf16 matrix product of the tower's shape is measured at least `BF16_MIN_SPEEDUP` times faster than fp32, and fp32
everywhere else; it logs the flags it saw and the timings. bf16's accuracy against fp32 (anomaly-map correlation,
AUROC change on the synthetic benchmark) is a property of the number format rather than of the machine; `aaclip
bench` measures it against `ACCURACY_BOUNDS`, and the chooser checks a measured accuracy when it is given one.
On CUDA, `auto` is bf16 where the card supports it, else fp16. The default of `aaclip detect`/`evaluate` stays
`float32` (the reference's numbers); `--dtype auto` is the opt-in.

The whole model is cast (weights, stored anchors, scoring head), like `from_pretrained(dtype=...)`; outputs come back
in that dtype.

`--device` accepts `auto`, `cpu`, `cuda`, `cuda:N` and `mps`; a device this machine does not have, or a name torch
does not know, is a one-line `BadInputError` naming the flag and what was expected.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from ..errors import BadInputError, InvalidInputError
from .cpu import SIMD_FLAGS, cpu_flags


logger = logging.getLogger(__name__)


__all__ = [
    "ACCURACY_BOUNDS",
    "BF16_CPU_FLAGS",
    "BF16_MIN_SPEEDUP",
    "DtypeChoice",
    "choose_cpu_dtype",
    "measure_matmul_seconds",
    "native_bf16",
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

    `None`/`"auto"`: on CPU `choose_cpu_dtype()` (bf16 where native and measured faster, else fp32), bf16 on CUDA
    when the card supports it, else fp16.
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
            if device.type == "cpu":
                choice = choose_cpu_dtype()
                logger.info(
                    "--dtype auto on the CPU: %s (%s)", str(choice.dtype).removeprefix("torch."), choice.reason
                )
                return choice.dtype
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
        help="inference precision; auto = bfloat16 on CPUs with native bf16 (AVX512-BF16, AMX) where measured faster, "
        "else float32; on CUDA bfloat16 where the card supports it, else float16",
    )


def cast_for_inference(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast the whole model (weights and buffers, including stored anchors) and put it in eval mode."""
    return model.to(dtype=dtype).eval()


# What `--device` accepts (besides a CUDA index), for the error message.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None`/`"auto"`: CUDA if available, else Apple MPS, else CPU. A named device must exist on this machine."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    expected = f"expected one of {', '.join(DEVICE_CHOICES)}"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BadInputError(f"{device!r} is not a device; {expected}", field="--device") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BadInputError(f"{device!r}: this machine has no CUDA GPU; expected cpu or auto", field="--device")
        if resolved.index is not None and resolved.index >= count:
            have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise BadInputError(
                f"{device!r}: this machine has {count} CUDA GPU(s), {have}; {expected}", field="--device"
            )
    elif resolved.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise BadInputError(f"{device!r}: Apple MPS is not available here; {expected}", field="--device")
    elif resolved.type != "cpu":
        raise BadInputError(f"{device!r} is not supported; {expected}", field="--device")
    return resolved


# ----------------------------------------------------------------------------------------------
# --dtype auto on the CPU: bf16 where native and measured faster
# ----------------------------------------------------------------------------------------------

# /proc/cpuinfo flags of native bf16 arithmetic: x86 AVX512-BF16 dot products and AMX bf16 tiles; Arm's BF16
# extension (reported as "bf16" in its Features line).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# bf16 must beat fp32 by this factor on the probe product to be chosen: native bf16 doubles (AVX512-BF16) or more
# (AMX) the multiply-adds per cycle, while timing noise on a shared machine is a few per cent.
BF16_MIN_SPEEDUP = 1.2
# The probe: one product of the tower's shape (tokens x width @ width x width of ViT-L/14 at 518 px), best of
# `PROBE_REPEATS` alternating calls per dtype after one untimed call each.
PROBE_SHAPE = (1370, 1024, 1024)
PROBE_REPEATS = 3
# The accuracy a reduced precision must keep against fp32 (anomaly-map correlation; image and pixel AUROC change
# in points on the synthetic benchmark); the same bounds as the int8 goal in docs/performance.md.
ACCURACY_BOUNDS = {"map_correlation": 0.99, "auroc_change_points": 0.5}


@dataclass
class DtypeChoice:
    """What `choose_cpu_dtype` picked and why: the native-bf16 flags it saw, the timings and accuracy it used."""

    dtype: torch.dtype
    reason: str
    flags: list[str] = field(default_factory=list)
    native: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "dtype": str(self.dtype).removeprefix("torch.")}


def native_bf16(flags) -> list[str]:
    """The native-bf16 flags among `flags` (empty: bf16 would be emulated)."""
    return [flag for flag in BF16_CPU_FLAGS if flag in set(flags)]


def measure_matmul_seconds(dtypes=(torch.float32, torch.bfloat16), shape=PROBE_SHAPE, repeats: int = PROBE_REPEATS):
    """Best seconds per dtype name of one `(M, K) @ (K, N)` product on the CPU: one untimed call each, then
    `repeats` rounds alternating the dtypes (a change of load hits all of them alike)."""
    rows, inner, cols = shape
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, inner, generator=generator), torch.randn(inner, cols, generator=generator)
    operands = {str(dtype).removeprefix("torch."): (a.to(dtype), b.to(dtype)) for dtype in dtypes}
    for left, right in operands.values():
        torch.matmul(left, right)
    best = dict.fromkeys(operands, float("inf"))
    for _ in range(repeats):
        for name, (left, right) in operands.items():
            start = time.perf_counter()
            torch.matmul(left, right)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def choose_cpu_dtype(
    flags=None,
    seconds: dict[str, float] | None = None,
    accuracy: dict[str, float] | None = None,
    min_speedup: float = BF16_MIN_SPEEDUP,
) -> DtypeChoice:
    """`--dtype auto` on a CPU: bf16 when the CPU has native bf16 (`flags`, default: this machine's), bf16 is measured
    at least `min_speedup` times faster (`seconds` per dtype name, default: the probe product timed now), and, when
    an `accuracy` measurement is given (`map_correlation`, `auroc_change_points`), it is within `ACCURACY_BOUNDS`;
    fp32 otherwise. The choice records the reason, the flags and the timings."""
    seen = set(cpu_flags() if flags is None else flags)
    shown = [flag for flag in SIMD_FLAGS if flag in seen]  # what the report names
    native = native_bf16(seen)
    if not native:
        reason = f"no native bf16 on this CPU (none of {', '.join(BF16_CPU_FLAGS)})"
        return DtypeChoice(torch.float32, reason, shown, native)
    if seconds is None:
        if not dtype_supported(torch.bfloat16, "cpu"):
            return DtypeChoice(torch.float32, "this torch build has no CPU bf16 kernels", shown, native)
        seconds = measure_matmul_seconds()
    speedup = seconds["float32"] / seconds["bfloat16"]
    timing = f"bf16 {speedup:.2f}x fp32 on a {'x'.join(map(str, PROBE_SHAPE))} product"
    if speedup < min_speedup:
        reason = f"native bf16 ({', '.join(native)}) but {timing}, below {min_speedup}x"
        return DtypeChoice(torch.float32, reason, shown, native, seconds, speedup)
    if accuracy is not None:
        correlation = accuracy.get("map_correlation", 1.0)
        change = abs(accuracy.get("auroc_change_points", 0.0))
        if correlation < ACCURACY_BOUNDS["map_correlation"] or change > ACCURACY_BOUNDS["auroc_change_points"]:
            reason = f"{timing}, but its accuracy (map correlation {correlation:.4f}, AUROC change {change:.2f} points) is outside {ACCURACY_BOUNDS}"
            return DtypeChoice(torch.float32, reason, shown, native, seconds, speedup)
    return DtypeChoice(torch.bfloat16, f"native bf16 ({', '.join(native)}), {timing}", shown, native, seconds, speedup)
