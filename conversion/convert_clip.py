"""``aaclip convert-clip``: any CLIP checkpoint -> an ``AAClipModel`` folder (or a plain HF ``CLIPModel``).

Sources:

- an OpenAI TorchScript archive such as ``ViT-L-14-336px.pt`` (read with ``torch.jit.load``);
- an OpenAI or OpenCLIP state dict (``.pt``/``.pth``/``.bin`` via ``torch.load(weights_only=True)``,
  or ``.safetensors``), including OpenCLIP training checkpoints (``{"state_dict": ...}``);
- an HF CLIP folder or Hub repo id.

The converter prints what it mapped and dropped, then checks the result against the source where
the source can be run: with ``open_clip`` importable, an ``open_clip.CLIP`` built from the same
weights at the *target* size and activation (its own ``resize_pos_embed`` included) is the oracle;
otherwise a TorchScript archive is run as-is at its native size and compared with a native-size
conversion. The check reports the max abs difference of image and text embeddings.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from ..errors import InvalidInputError
from ..modeling.configuration_aaclip import AAClipConfig
from ..modeling.modeling_aaclip import AAClipModel
from ..modeling.processing_aaclip import AAClipProcessor
from ..runtime.model_folder import save_model_folder
from ..runtime.serialization import load_tensor_file
from .clip_weights import (
    DROPPED_KEYS,
    ConversionError,
    MappingReport,
    convert_clip_state_dict,
    infer_clip_config,
    resize_clip_state_dict,
    unwrap_state_dict,
)


HIDDEN_ACTS = ("quick_gelu", "gelu")
# OpenAI's released CLIP weights were trained with QuickGELU; a state dict cannot say which it used.
OPENAI_HIDDEN_ACT = "quick_gelu"
# Embedding differences above this fail a converter run (fp32 CLIP towers agree to ~1e-5).
DEFAULT_VERIFY_ATOL = 1e-4
VERIFY_BATCH = 2
VERIFY_SEED = 0


@dataclass
class ClipSource:
    """A CLIP checkpoint read into an HF ``CLIPModel`` at its own image size."""

    model: CLIPModel
    kind: str  # "torchscript", "state_dict" or "hf"
    path: str
    hidden_act: str
    report: MappingReport
    state_dict: dict[str, torch.Tensor] | None = None  # source-layout tensors (for the open_clip check)
    script_module: torch.jit.ScriptModule | None = field(default=None, repr=False)


@dataclass
class Verification:
    """Max abs differences between converted and reference embeddings."""

    reference: str
    image_max_abs_diff: float
    text_max_abs_diff: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.image_max_abs_diff, self.text_max_abs_diff)

    def __str__(self) -> str:
        return (
            f"Verification against {self.reference}: max |image embedding diff| = {self.image_max_abs_diff:.3g}, "
            f"max |text embedding diff| = {self.text_max_abs_diff:.3g}"
        )


def _pooled(output) -> torch.Tensor:
    # transformers 5.x returns a ModelOutput whose pooler_output holds the projected features.
    return output.pooler_output if hasattr(output, "pooler_output") else output


def clip_model_from_state_dict(hf_state_dict: dict[str, torch.Tensor], config: CLIPConfig) -> CLIPModel:
    """An fp32 ``CLIPModel`` holding exactly these tensors (strict: every key must fit)."""
    model = CLIPModel(config)
    model.load_state_dict(hf_state_dict, strict=True)
    return model.float().eval()


WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def is_hf_source(src: str | Path) -> bool:
    """A folder, or a name shaped like a Hub repo id (``owner/name``) that is not a local weights file."""
    path = Path(src)
    if path.is_dir():
        return True
    return not path.exists() and str(src).count("/") == 1 and not str(src).endswith(WEIGHT_FILE_SUFFIXES)


def load_clip_source(
    src: str | Path,
    hidden_act: str | None = None,
    text_heads: int | None = None,
    vision_heads: int | None = None,
) -> ClipSource:
    """Read ``src`` (see module docstring) into a native-size HF ``CLIPModel``.

    ``hidden_act=None`` keeps the source's activation: the HF config's value for HF sources,
    QuickGELU for OpenAI archives and state dicts (say ``"gelu"`` for OpenCLIP models trained without it).
    """
    if hidden_act is not None and hidden_act not in HIDDEN_ACTS:
        raise InvalidInputError(f"hidden_act must be one of {HIDDEN_ACTS}, got {hidden_act!r}")
    path = Path(src)
    if is_hf_source(src):
        config = CLIPConfig.from_pretrained(str(src))
        if config.model_type != "clip":  # transformers only warns, then loads nothing: a random CLIP
            raise ConversionError(
                f"{src}: config.json has model_type {config.model_type!r}; expected a CLIP model ('clip')"
            )
        acts = {config.text_config.hidden_act, config.vision_config.hidden_act}
        if hidden_act is None and len(acts) > 1:
            raise ConversionError(f"{src}: the towers use different activations {sorted(acts)}; pass --hidden-act")
        act = hidden_act or acts.pop()
        config.text_config.hidden_act = act
        config.vision_config.hidden_act = act
        model = CLIPModel.from_pretrained(str(src), config=config).float().eval()
        report = MappingReport(notes=[f"HF CLIP source {src}: every tensor kept under its own name"])
        report.mapped = [(k, k, "copy") for k in model.state_dict() if not k.endswith("position_ids")]
        return ClipSource(model=model, kind="hf", path=str(src), hidden_act=act, report=report)

    loaded, file_kind = load_tensor_file(path)
    script_module = loaded if file_kind == "torchscript" else None
    raw = loaded.state_dict() if script_module is not None else loaded
    state_dict = unwrap_state_dict(raw, source=str(path))
    act = hidden_act or OPENAI_HIDDEN_ACT
    hf_state_dict, report = convert_clip_state_dict(state_dict, source=str(path))
    config = infer_clip_config(
        state_dict, hidden_act=act, text_heads=text_heads, vision_heads=vision_heads, source=str(path)
    )
    if hidden_act is None:
        report.notes.append(
            "activation assumed quick_gelu (OpenAI weights); pass --hidden-act gelu for OpenCLIP models "
            "trained with exact GELU, or for the AA-CLIP reference setting"
        )
    model = clip_model_from_state_dict(hf_state_dict, config)
    return ClipSource(
        model=model,
        kind="torchscript" if script_module is not None else "state_dict",
        path=str(path),
        hidden_act=act,
        report=report,
        state_dict=state_dict,
        script_module=script_module,
    )


def resize_clip_model(model: CLIPModel, image_size: int) -> CLIPModel:
    """A copy of ``model`` with the position table resized (antialiased bicubic) to ``image_size``."""
    if image_size == model.config.vision_config.image_size:
        return model
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    state, config = resize_clip_state_dict(state, model.config, image_size)
    return clip_model_from_state_dict(state, config)


def set_hidden_act(model: CLIPModel, hidden_act: str) -> CLIPModel:
    """Same weights, other activation in both towers (a rebuild: the activation is fixed at construction)."""
    if model.config.text_config.hidden_act == hidden_act == model.config.vision_config.hidden_act:
        return model
    config = CLIPConfig.from_dict(model.config.to_dict())
    config.text_config.hidden_act = hidden_act
    config.vision_config.hidden_act = hidden_act
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    return clip_model_from_state_dict(state, config)


def clip_view(model) -> CLIPModel:
    """The plain ``CLIPModel`` inside an ``AAClipModel`` (same tensors), for checks against CLIP references."""
    if isinstance(model, CLIPModel):
        return model
    config = CLIPConfig(
        text_config=model.config.text_config.to_dict(),
        vision_config=model.config.vision_config.to_dict(),
        projection_dim=model.config.projection_dim,
        logit_scale_init_value=model.config.logit_scale_init_value,
    )
    reference = CLIPModel(config)
    wanted = {k for k in reference.state_dict() if not k.endswith("position_ids")}
    state = {k: v for k, v in model.state_dict().items() if k in wanted}
    # Adapted layers carry the stock layer's tensors under the same names plus an `.adapter.` child.
    missing = wanted - set(state)
    if missing:
        raise ConversionError(f"model lacks CLIP tensors {sorted(missing)[:5]}")
    reference.load_state_dict(state, strict=False, assign=True)  # shares storage: no second copy of ViT-L
    return reference.float().eval()


def _verification_inputs(config: CLIPConfig, image_size: int, batch: int = VERIFY_BATCH):
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    channels = config.vision_config.num_channels
    images = torch.randn(batch, channels, image_size, image_size, generator=generator)
    text = config.text_config
    length = text.max_position_embeddings
    # Ordinary tokens below BOS, one EOS (the highest id, where open_clip's argmax pools), zero padding.
    ids = torch.randint(1, text.vocab_size - 2, (batch, length), generator=generator)
    ids[:, 0] = text.bos_token_id
    eos_positions = torch.randint(2, length, (batch,), generator=generator)
    for row, position in enumerate(eos_positions.tolist()):
        ids[row, position] = text.eos_token_id
        ids[row, position + 1 :] = 0
    return images, ids


@torch.no_grad()
def _compare(
    model: CLIPModel, encode_image: Callable, encode_text: Callable, image_size: int, name: str
) -> Verification:
    images, ids = _verification_inputs(model.config, image_size)
    image_diff = (_pooled(model.get_image_features(pixel_values=images)) - encode_image(images).float()).abs().max()
    text_diff = (_pooled(model.get_text_features(input_ids=ids)) - encode_text(ids).float()).abs().max()
    return Verification(name, float(image_diff), float(text_diff))


def open_clip_reference(
    source_state_dict: dict[str, torch.Tensor], config: CLIPConfig, image_size: int, hidden_act: str
):
    """An ``open_clip`` model built independently from the *source* weights at the target size and activation.

    Its own ``resize_pos_embed`` resizes the position table, so this checks the resize as well.
    """
    import open_clip
    from open_clip.model import resize_pos_embed

    state = {}
    for key, value in source_state_dict.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if key.split(".")[-1] in DROPPED_KEYS:  # metadata and buffers open_clip does not store
            continue
        state[key] = value.float()
    vision, text = config.vision_config, config.text_config
    vision_cfg = {
        "layers": vision.num_hidden_layers,
        "width": vision.hidden_size,
        "head_width": vision.hidden_size // vision.num_attention_heads,
        "mlp_ratio": vision.intermediate_size / vision.hidden_size,
        "patch_size": vision.patch_size,
        "image_size": image_size,
    }
    text_cfg = {
        "context_length": text.max_position_embeddings,
        "vocab_size": text.vocab_size,
        "width": text.hidden_size,
        "heads": text.num_attention_heads,
        "layers": text.num_hidden_layers,
        "mlp_ratio": text.intermediate_size / text.hidden_size,
        "proj_bias": "text.text_projection.bias" in state,
    }
    custom_text = any(k.startswith("text.") for k in state)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(config.projection_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=hidden_act == "quick_gelu")
    resize_pos_embed(state, model)
    model.load_state_dict(state, strict=True, assign=True)
    return model.float().eval()


def verify_clip(model: CLIPModel, source: ClipSource, print_fn: Callable[[str], None] = print) -> Verification | None:
    """Check a converted CLIP (any size/activation) against a run of the source; ``None`` when impossible."""
    image_size = model.config.vision_config.image_size
    hidden_act = model.config.vision_config.hidden_act
    if source.state_dict is not None and importlib.util.find_spec("open_clip") is not None:
        reference = open_clip_reference(source.state_dict, model.config, image_size, hidden_act)
        name = f"open_clip ({image_size} px, {hidden_act}, open_clip's resize_pos_embed)"
        return _compare(model, reference.encode_image, reference.encode_text, image_size, name)
    if source.script_module is not None:
        # The archive runs only as saved: native size and the source's activation.
        native = source.model
        if source.hidden_act != OPENAI_HIDDEN_ACT:
            native = set_hidden_act(native, OPENAI_HIDDEN_ACT)
        script = source.script_module.float()
        native_size = native.config.vision_config.image_size
        try:
            return _compare(
                native,
                script.encode_image,
                script.encode_text,
                native_size,
                f"the TorchScript archive itself ({native_size} px, quick_gelu; key mapping only)",
            )
        except Exception as error:  # noqa: BLE001 - an archive that cannot run in fp32 on CPU is reported, not fatal
            print_fn(f"Verification skipped: the TorchScript archive did not run in fp32 on CPU ({error})")
            return None
    print_fn(
        "Verification skipped: "
        + (
            "HF CLIP source (tensors copied unchanged)"
            if source.kind == "hf"
            else "open_clip is not installed (pip install open_clip_torch) and the source is not a TorchScript archive"
        )
    )
    return None


def check_verification(result: Verification | None, atol: float, print_fn: Callable[[str], None] = print) -> None:
    if result is None:
        return
    print_fn(str(result))
    if result.max_abs_diff > atol:
        raise ConversionError(
            f"converted embeddings differ from {result.reference} by {result.max_abs_diff:.3g} > {atol:g}; "
            "check --hidden-act and the head counts (--text-heads/--vision-heads)"
        )


def build_aaclip(
    clip_model: CLIPModel, image_size: int, hidden_act: str, processor=None, seed: int | None = None, **aaclip_fields
):
    """``AAClipModel.from_clip_pretrained`` on an in-memory CLIP (the position table is resized there)."""

    return AAClipModel.from_clip_pretrained(
        clip_model, processor=processor, seed=seed, image_size=image_size, hidden_act=hidden_act, **aaclip_fields
    )


def default_feature_layers(num_layers: int, num_levels: int) -> list[int]:
    """Evenly spaced levels ending at the last layer: ``[6, 12, 18, 24]`` for ViT-L with 4 levels (the reference)."""
    return [num_layers * (j + 1) // num_levels for j in range(num_levels)]


def aaclip_fields_for(clip_config: CLIPConfig, **overrides) -> dict:
    """AA-CLIP fields that fit this backbone: the paper's values, scaled down for towers smaller than ViT-L.

    Feature levels keep the reference's spacing (every quarter of the vision tower) and adapter
    counts are capped at the tower depth; explicit ``overrides`` win.
    """

    defaults = AAClipConfig.__dataclass_fields__
    levels = len(defaults["feature_layers"].default)
    fields = {
        "feature_layers": default_feature_layers(clip_config.vision_config.num_hidden_layers, levels),
        "text_adapter_layers": min(defaults["text_adapter_layers"].default, clip_config.text_config.num_hidden_layers),
        "vision_adapter_layers": min(
            defaults["vision_adapter_layers"].default, clip_config.vision_config.num_hidden_layers
        ),
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return fields


def plain_clip_processor(model: CLIPModel):
    """A stock ``CLIPProcessor`` with the reference preprocessing at the model's size, for ``--clip-only`` folders."""

    processor = AAClipProcessor.for_model(model.config)
    return CLIPProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer)


def save_output(model, processor, output_dir: str | Path, print_fn: Callable[[str], None] = print) -> Path:
    """Write the model and its processor: an AA-CLIP model through the package's one writer (`save_model_folder`:
    pipeline-ready, with a manifest), a plain CLIP with `save_pretrained`. Publishing is the CLI's `--push-to-hub`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, AAClipModel):
        save_model_folder(model, processor, output_dir)
    else:
        model.save_pretrained(str(output_dir))
        if processor is not None:
            processor.save_pretrained(str(output_dir))
    print_fn(f"Saved {type(model).__name__} to {output_dir}")
    return output_dir


def convert_clip(
    src: str | Path,
    output_dir: str | Path,
    image_size: int | None = None,
    hidden_act: str | None = None,
    clip_only: bool = False,
    feature_layers: list[int] | None = None,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    seed: int | None = None,
    verify: bool = True,
    verify_atol: float = DEFAULT_VERIFY_ATOL,
    print_fn: Callable[[str], None] = print,
):
    """Convert ``src`` and write ``output_dir``; returns the saved model (``AAClipModel`` or ``CLIPModel``)."""
    source = load_clip_source(src, hidden_act=hidden_act, text_heads=text_heads, vision_heads=vision_heads)
    print_fn(f"Source: {source.path} ({source.kind})")
    print_fn(source.report.summary())
    clip_model = source.model
    image_size = image_size or clip_model.config.vision_config.image_size
    act = source.hidden_act
    if clip_only:
        model = resize_clip_model(clip_model, image_size)
        processor = plain_clip_processor(model)
    else:
        fields = aaclip_fields_for(clip_model.config, feature_layers=feature_layers)
        model = build_aaclip(clip_model, image_size=image_size, hidden_act=act, seed=seed, **fields)
        processor = AAClipProcessor.for_model(model.config)
        model.refresh_text_anchors(processor)  # the generic anchor, with its fingerprint
    print_fn(
        f"Target: {type(model).__name__}, image_size {image_size} "
        f"({image_size // clip_model.config.vision_config.patch_size}^2 patches), hidden_act {act}"
        + (
            ""
            if clip_only
            else f", feature_layers {model.config.feature_layers}, adapters after text layers "
            f"1..{model.config.text_adapter_layers} and vision layers 1..{model.config.vision_adapter_layers} (fresh)"
        )
    )
    if verify:
        check_verification(verify_clip(clip_view(model), source, print_fn), verify_atol, print_fn)
    save_output(model, processor, output_dir, print_fn)
    return model
