"""The GPU readiness worker (`benchmarks/gpu.sh`): forward throughput in fp32/bf16/fp16 per batch size, and a
stage-2 run (real loss, synthetic defect images with exact masks, bf16 autocast where supported) with its loss
curve, peak memory and images/s. `device="cpu"` runs the same code as a dry run (tests, smoke preset)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import preset_config, random_model


class _Device:
    """Synchronisation and peak-memory counters of the measured device; no-ops (peak None) off CUDA."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        return self.torch.cuda.max_memory_allocated(self.device) if self.cuda else None


def _forward_throughput(base, flops: float, size: int, batches: list[int], repeats: int, dev: _Device) -> dict:
    """Inference forward per dtype and batch: s/image, images/s, TFLOP/s, peak allocated (or the error)."""
    import torch

    from aaclip_hf.runtime.devices import dtype_supported

    out: dict[str, Any] = {}
    for dtype_name in ("float32", "bfloat16", "float16"):
        dtype = getattr(torch, dtype_name)
        if not dtype_supported(dtype, dev.device):
            out[dtype_name] = {"error": f"{dtype_name} not supported on {dev.device}"}
            continue
        model = base.to(dtype=dtype)
        for batch in batches:
            pixels = torch.randn(batch, 3, size, size, device=dev.device, dtype=dtype)
            dev.reset_peak()
            try:
                with torch.inference_mode():
                    model(pixels)  # warm-up: kernel selection, allocator
                    dev.sync()
                    start = time.perf_counter()
                    for _ in range(repeats):
                        model(pixels)
                    dev.sync()
                seconds = (time.perf_counter() - start) / repeats
                out[f"{dtype_name}/{batch}"] = {
                    "seconds_per_image": seconds / batch,
                    "images_per_second": batch / seconds,
                    "tflops": flops * batch / seconds / 1e12,
                    "peak_allocated": dev.peak(),
                }
            except torch.OutOfMemoryError:
                out[f"{dtype_name}/{batch}"] = {"error": "out of memory"}
            del pixels
    return out


def _stage2_images(size: int, batch: int, tmp: str):
    """The synthetic benchmark's test images (two classes) at `size`: pixel values and exact masks."""
    import numpy as np
    import torch
    from PIL import Image

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.data.readers import load_samples
    from aaclip_hf.data.synthetic import generate_synthetic_dataset

    root = generate_synthetic_dataset(
        Path(tmp) / "gpu_synthetic",
        classes=["bottle", "carpet"],
        image_size=size,
        n_train_good=1,
        n_test_good=batch // 2,
        n_test_defect_per_kind=1,
        progress=False,
    )
    samples = load_samples(root, "test")
    processor = AAClipProcessor()
    processor.image_processor.size = {"height": size, "width": size}
    images = [Image.open(s.image_path).convert("RGB") for s in samples]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    masks = torch.from_numpy(
        np.stack(
            [
                np.asarray(Image.open(s.mask_path).convert("L").resize((size, size), Image.NEAREST)) > 0
                if s.mask_path
                else np.zeros((size, size), dtype=bool)
                for s in samples
            ]
        )
    ).float()
    return pixels, masks


def _stage2_run(model, pixels_all, masks_all, size: int, spec: dict, steps: int, dev: _Device) -> dict:
    """`steps` stage-2 steps cycling through the images: loss curve, step times, images/s after the warm-up."""
    import torch

    from aaclip_hf.training import stage2_loss
    from aaclip_hf.training.trainer import set_trainable, stage_parameters

    batch, device = spec["stage2_batch"], dev.device
    params = stage_parameters(model, "vision")
    set_trainable(model, params)
    model.train()
    autocast = dev.cuda and torch.cuda.is_bf16_supported()
    optimizer = torch.optim.Adam(params, lr=spec["stage2_lr"], betas=(0.5, 0.999))
    losses, times = [], []
    dev.reset_peak()
    for step in range(steps):
        index = [(step * batch + i) % len(pixels_all) for i in range(batch)]
        pixels = pixels_all[index].to(device)
        masks = masks_all[index].to(device)
        labels = (masks.flatten(1).amax(1) > 0).long()
        anchors = model.text_anchors_for(["object"] * batch)
        dev.sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            patch_embeds, image_embeds = model.get_vision_features(pixels)
        maps = model.training_maps([f.float() for f in patch_embeds], anchors, (size, size))
        loss = stage2_loss(
            maps, masks, torch.ones(batch, dtype=torch.bool, device=device), image_embeds.float(), anchors, labels
        )["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        dev.sync()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    steady = times[min(spec["stage2_warmup_steps"], len(times) - 1) :]
    return {
        "batch_size": batch,
        "steps": steps,
        "precision": "bf16 autocast" if autocast else "fp32",
        "loss_curve": losses,
        "step_seconds": times,
        "images_per_second": batch * len(steady) / sum(steady),
        "peak_allocated": dev.peak(),
        "num_images": len(pixels_all),
    }


def worker_gpu(
    preset: dict, batches: list[int], device: str = "cuda", steps: int | None = None, tmp: str | None = None
) -> dict:
    """GPU readiness: forward throughput per dtype and batch, then a stage-2 run on synthetic defect images."""
    import torch

    from aaclip_hf.runtime.flops import vision_forward_flops

    dev = _Device(device)
    spec = preset["gpu"]
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev.device) if dev.cuda else "cpu (dry run)",
        "torch": torch.__version__,
        "forward": {},
        "stage2": {},
    }
    config = preset_config(preset, include_text_model=False)
    flops = vision_forward_flops(config).total
    base = random_model(config).to(dev.device)
    size = config.vision_config.image_size
    out["forward"] = _forward_throughput(base, flops, size, batches, spec["repeats"], dev)
    model = base.to(dtype=torch.float32)
    # Stage 2 on the synthetic benchmark's defect images (exact masks), cycling through them.
    pixels, masks = _stage2_images(size, spec["stage2_batch"], tmp)
    out["stage2"] = _stage2_run(model, pixels, masks, size, spec, steps or spec["stage2_steps"], dev)
    return out
