"""Workers that measure training: stage 1 (text) with the frozen DPAM features recomputed vs cached, and one
stage-2 (vision) step with and without activation checkpointing. Each runs in its own process."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .common import PeakMemory, preset_config, random_masks, random_model, timed


@dataclass
class _Stage1Run:
    """What both stage-1 runs share: the model, its trainable text parameters and their start values, the data."""

    model: object
    processor: object
    params: list
    initial: list
    pixels: object
    masks: object
    labels: object
    size: int
    epochs: int
    batch: int
    classes: tuple = ("bottle",)

    def train(self, cache) -> tuple[float, list[float], dict]:
        """`epochs` epochs from the same start weights; DPAM features from `cache` where it holds them."""
        import torch

        from aaclip_hf.training import dpam_features, stage1_loss

        with torch.no_grad():
            for p, p0 in zip(self.params, self.initial):
                p.copy_(p0)
        optimizer = torch.optim.Adam(self.params, lr=1e-5, betas=(0.5, 0.999))
        n, classes = len(self.pixels), list(self.classes)
        losses, vision_seconds = [], 0.0
        with PeakMemory() as memory:
            start = time.perf_counter()
            for _epoch in range(self.epochs):
                for first in range(0, n, self.batch):
                    index = list(range(first, min(first + self.batch, n)))
                    t0 = time.perf_counter()
                    if cache is not None and cache.has_all(index):
                        feats = cache.get(index, "cpu", torch.float32)
                    else:
                        with torch.no_grad():
                            feats = dpam_features(self.model, self.pixels[index])
                        if cache is not None:
                            cache.put(index, feats)
                    vision_seconds += time.perf_counter() - t0
                    anchors = self.model.compute_text_anchors(classes, self.processor)
                    sample_anchors = anchors[[0] * len(index)]
                    maps = self.model.training_maps(feats.patch_embeds[-1:], sample_anchors, (self.size, self.size))
                    terms = stage1_loss(
                        maps,
                        self.masks[index],
                        torch.ones(len(index), dtype=torch.bool),
                        sample_anchors,
                        image_embeds=feats.image_embeds,
                        labels=self.labels[index],
                    )
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    optimizer.step()
                    losses.append(float(terms["loss"]))
            seconds = time.perf_counter() - start
        return seconds, losses, {"vision_seconds": vision_seconds, "memory": memory.to_dict()}


def worker_stage1(preset: dict) -> dict:
    """Stage 1 (text) for E epochs on N images: frozen DPAM features recomputed every step vs cached."""
    import torch

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.training import Stage1FeatureCache, dpam_features
    from aaclip_hf.training.trainer import set_trainable, stage_parameters

    spec = preset["stage1"]
    size = spec["image_size"]
    config = preset_config(preset, vision_config={"image_size": size})
    model = random_model(config)
    processor = AAClipProcessor.for_model(config)
    params = stage_parameters(model, "text")
    set_trainable(model, params)
    n, batch = spec["num_images"], spec["batch_size"]
    masks = random_masks(n, size, seed=1)
    run = _Stage1Run(
        model=model,
        processor=processor,
        params=params,
        initial=[p.detach().clone() for p in params],
        pixels=torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)),
        masks=masks,
        labels=(masks.flatten(1).amax(1) > 0).long(),
        size=size,
        epochs=spec["epochs"],
        batch=batch,
    )
    # Untimed warm-up of both paths (first-touch page faults and kernel setup would be charged to the first run).
    with torch.no_grad():
        dpam_features(model, run.pixels[:batch])
    model.compute_text_anchors(list(run.classes), processor).sum().backward()
    recompute_seconds, recompute_losses, recompute_info = run.train(None)
    cached_seconds, cached_losses, cached_info = run.train(Stage1FeatureCache())
    steps = len(recompute_losses)
    text_seconds_per_step = (cached_seconds - cached_info["vision_seconds"]) / steps
    vision_seconds_per_image = recompute_info["vision_seconds"] / (spec["epochs"] * n)
    out = {
        **spec,
        "steps": steps,
        "seconds_recomputed": recompute_seconds,
        "seconds_cached": cached_seconds,
        "speedup": recompute_seconds / cached_seconds,
        "dpam_seconds_per_image": vision_seconds_per_image,
        "text_seconds_per_step": text_seconds_per_step,
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(recompute_losses, cached_losses)),
        "memory_recomputed": recompute_info["memory"],
        "memory_cached": cached_info["memory"],
    }
    out.update(
        _predicted_at_default_size(preset, config, spec, vision_seconds_per_image, text_seconds_per_step, steps)
    )
    return out


def _predicted_at_default_size(
    preset: dict, config, spec: dict, vision_seconds_per_image: float, text_seconds_per_step: float, steps: int
) -> dict:
    """The same loop at the preset's full image size, predicted from the measured parts: DPAM time scales with
    its FLOPs, the text steps do not change."""
    from aaclip_hf.runtime.flops import vision_forward_flops

    scale = vision_forward_flops(preset_config(preset)).total / vision_forward_flops(config).total
    v518 = vision_seconds_per_image * scale * spec["num_images"]
    e = spec["epochs"]
    return {
        "predicted_speedup_at_default_size": (
            e * (v518 + text_seconds_per_step * steps / e) / (v518 + text_seconds_per_step * steps)
        ),
        "flop_scale_to_default_size": scale,
    }


def worker_stage2(preset: dict, checkpointing: bool) -> dict:
    """One stage-2 (vision) optimizer step at the preset size, batch 2: time, peak memory, gradient check."""
    import warnings

    import torch

    from aaclip_hf.training import stage2_loss
    from aaclip_hf.training.trainer import set_trainable, stage_parameters

    config = preset_config(preset, include_text_model=False)
    model = random_model(config)
    params = stage_parameters(model, "vision")
    set_trainable(model, params)
    if checkpointing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable()
            else:
                model.gradient_checkpointing_enable()
    model.train()
    batch, size = preset["stage2_batch"], config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = random_masks(batch, size, seed=1)
    labels = (masks.flatten(1).amax(1) > 0).long()
    anchors = model.text_anchors_for(["object"] * batch)
    optimizer = torch.optim.Adam(params, lr=5e-4, betas=(0.5, 0.999))

    def step():
        patch_embeds, image_embeds = model.get_vision_features(pixels)
        maps = model.training_maps(patch_embeds, anchors, (size, size))
        loss = stage2_loss(maps, masks, torch.ones(batch, dtype=torch.bool), image_embeds, anchors, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)))
        optimizer.step()
        return float(loss), grad_norm

    state = {id(p): p.detach().clone() for p in params}
    # The memory region includes the untimed warm-up step: freed pages may stay resident, and a baseline taken
    # after the warm-up would hide the step's activations.
    with PeakMemory() as memory:
        for _ in range(preset["warmup"]):  # untimed; the weights are then put back so the timed step is the first
            step()
        with torch.no_grad():
            for p in params:
                p.copy_(state[id(p)])
        optimizer = torch.optim.Adam(params, lr=5e-4, betas=(0.5, 0.999))
        seconds, (loss, grad_norm) = timed(step, 0, 1)
    return {
        "checkpointing": checkpointing,
        "batch_size": batch,
        "seconds": seconds,
        "loss": loss,
        "grad_norm": grad_norm,
        "trainable_parameters": sum(p.numel() for p in params),
        "memory": memory.to_dict(),
    }
