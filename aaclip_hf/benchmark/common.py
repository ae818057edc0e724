"""What every benchmark worker shares: the peak memory of a code region, the preset's model, timing, masks."""

from __future__ import annotations

import json
import resource
import time
from typing import Any


# ----------------------------------------------------------------------------------------------
# memory: peak resident set of the measured region
# ----------------------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak RSS of a code region: resets the kernel's high-water mark on entry where Linux allows it."""

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        self.exact = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.exact = True
        except OSError:
            pass
        self.before = _proc_status_bytes("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc) -> None:
        peak = _proc_status_bytes("VmHWM") if self.exact else None
        self.peak = peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.delta = max(self.peak - self.before, 0)

    def to_dict(self) -> dict:
        return {"rss_before": self.before, "peak_rss": self.peak, "peak_delta": self.delta, "exact_reset": self.exact}


# ----------------------------------------------------------------------------------------------
# the preset's model (random weights), timing, synthetic masks
# ----------------------------------------------------------------------------------------------


def preset_config(preset: dict, **overrides):
    """The preset's `AAClipConfig`; `text_config` / `vision_config` overrides are merged into the preset's."""
    from aaclip_hf import AAClipConfig

    fields = json.loads(json.dumps(preset["model"]))
    for key in ("text_config", "vision_config"):
        if key in overrides:
            fields[key] = {**fields.get(key, {}), **overrides.pop(key)}
    fields.update(overrides)
    return AAClipConfig(**fields)


def section_config(preset: dict, section: str):
    """The preset's inference-only config, at the section's own `image_size` where it sets one."""
    size = preset[section].get("image_size")
    return preset_config(preset, include_text_model=False, **({"vision_config": {"image_size": size}} if size else {}))


def random_model(config, seed: int = 0):
    """A seeded random-weight model in eval mode, adapters initialised, one class ("object") stored."""
    import torch

    from aaclip_hf import AAClipModel

    torch.manual_seed(seed)
    model = AAClipModel(config).eval()
    model.init_adapter_weights(seed=seed)
    anchors = torch.nn.functional.normalize(torch.randn(1, config.projection_dim, 2), dim=1)
    model.store_text_anchors(["object"], anchors)
    return model


def timed(fn, warmup: int, iterations: int) -> tuple[float, Any]:
    """Seconds per call of `fn` over `iterations` calls after `warmup` untimed ones, and the last result."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iterations):
        result = fn()
    return (time.perf_counter() - start) / iterations, result


def random_masks(num: int, size: int, seed: int):
    """Rectangular defects on the odd-indexed images, none on the even ones."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(num, size, size)
    for i in range(1, num, 2):
        y, x = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        h, w = torch.randint(size // 8, size // 3, (2,), generator=generator).tolist()
        masks[i, y : y + h, x : x + w] = 1.0
    return masks
