"""`aaclip convert-tokenizer`, `convert-clip`, `convert-original`: checkpoints -> verified AA-CLIP folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from .parsing import add_command


def register(subparsers) -> None:
    add_command(
        subparsers,
        "convert-tokenizer",
        "Write HF CLIP tokenizer files from OpenAI's BPE merges file.",
        run_tokenizer,
        add_tokenizer_arguments,
    )
    add_command(
        subparsers,
        "convert-clip",
        "Convert an OpenAI/OpenCLIP/HF CLIP checkpoint into an AA-CLIP (or CLIP) folder.",
        run_clip,
        add_clip_arguments,
    )
    add_command(
        subparsers,
        "convert-original",
        "Convert the reference AA-CLIP checkpoints (backbone + adapters) into an AA-CLIP folder.",
        run_original,
        add_original_arguments,
    )


def publish(args: argparse.Namespace, folder: str | Path, plain_clip: bool = False) -> None:
    """`--push-to-hub REPO`: AA-CLIP folders go through the package's allowlisted upload (card, pipeline code)."""
    from transformers import CLIPModel, CLIPProcessor

    from ..hub.publish import push_folder_to_hub

    if not args.push_to_hub:
        return
    if plain_clip:
        model = CLIPModel.from_pretrained(folder)
        url = model.push_to_hub(args.push_to_hub, private=args.private)
        CLIPProcessor.from_pretrained(folder).push_to_hub(args.push_to_hub, private=args.private)
    else:
        url = push_folder_to_hub(folder, args.push_to_hub, private=bool(args.private))
    print(f"Pushed to the Hub: {args.push_to_hub} ({url})")


def add_common_arguments(
    parser: argparse.ArgumentParser, image_size_default: int | None, act_default: str | None
) -> None:
    """Flags shared by convert-clip and convert-original."""
    from ..conversion.convert_clip import DEFAULT_VERIFY_ATOL, HIDDEN_ACTS

    parser.add_argument(
        "--image-size",
        type=int,
        default=image_size_default,
        help="input size baked into the position table (antialiased bicubic resize); "
        f"default: {image_size_default or 'the source size'}",
    )
    parser.add_argument(
        "--hidden-act",
        choices=HIDDEN_ACTS,
        default=act_default,
        help=f"activation of both towers; default: {act_default or 'the source (OpenAI: quick_gelu)'}",
    )
    parser.add_argument("--text-heads", type=int, default=None, help="text attention heads (default: width // 64)")
    parser.add_argument("--vision-heads", type=int, default=None, help="vision attention heads (default: width // 64)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fresh adapter initialisation")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the embedding check")
    parser.add_argument(
        "--verify-atol",
        type=float,
        default=DEFAULT_VERIFY_ATOL,
        help="largest accepted embedding difference in the check (default: %(default)g)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", default=None, help="create the Hub repo as private")


def add_tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bpe_file", nargs="?", help="OpenAI bpe_simple_vocab_16e6.txt(.gz); default: the one in open_clip_torch"
    )
    parser.add_argument("output_dir", help="folder for tokenizer.json and tokenizer_config.json")


def run_tokenizer(args: argparse.Namespace) -> int:
    from ..conversion.tokenizer import build_clip_tokenizer, convert_tokenizer, find_open_clip_bpe

    source = Path(args.bpe_file) if args.bpe_file else find_open_clip_bpe()
    out = convert_tokenizer(source, args.output_dir)
    print(f"Wrote CLIP tokenizer ({len(build_clip_tokenizer(source))} tokens) from {source} to {out}")
    return 0


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        help="OpenAI TorchScript .pt, OpenAI/OpenCLIP state dict (.pt/.pth/.bin/.safetensors), "
        "or HF CLIP folder / repo id",
    )
    parser.add_argument("output_dir", help="folder to write (AAClipModel + processor, or CLIPModel with --clip-only)")
    parser.add_argument("--clip-only", action="store_true", help="write a plain HF CLIPModel instead of AA-CLIP")
    parser.add_argument(
        "--feature-layers",
        type=int,
        nargs="+",
        default=None,
        help="1-based vision layers of the feature levels (default: every quarter, 6 12 18 24 for ViT-L)",
    )
    add_common_arguments(parser, image_size_default=None, act_default=None)


def run_clip(args: argparse.Namespace) -> int:
    from transformers import CLIPModel

    from ..conversion.convert_clip import convert_clip
    from ..runtime.loading import check_model_source

    check_model_source(args.src, "src", kind="file or folder")
    model = convert_clip(
        args.src,
        args.output_dir,
        image_size=args.image_size,
        hidden_act=args.hidden_act,
        clip_only=args.clip_only,
        feature_layers=args.feature_layers,
        text_heads=args.text_heads,
        vision_heads=args.vision_heads,
        seed=args.seed,
        verify=args.verify,
        verify_atol=args.verify_atol,
    )
    publish(args, args.output_dir, plain_clip=isinstance(model, CLIPModel))
    return 0


def add_original_arguments(parser: argparse.ArgumentParser) -> None:
    from ..conversion.original import (
        REFERENCE_ADAPTER_WEIGHT,
        REFERENCE_HIDDEN_ACT,
        REFERENCE_IMAGE_SIZE,
    )

    parser.add_argument(
        "--clip",
        required=True,
        help="backbone: OpenAI ViT-L-14-336px.pt, an OpenAI/OpenCLIP state dict, or an HF CLIP folder / repo id",
    )
    parser.add_argument("--text-adapter", default=None, help="reference text_adapter.pth (omit: plain-CLIP anchors)")
    parser.add_argument(
        "--image-adapter", default=None, help="reference image_adapter*.pth (omit: untrained vision side)"
    )
    parser.add_argument("--output", required=True, help="folder to write (AAClipModel + processor)")
    parser.add_argument(
        "--feature-layers",
        type=int,
        nargs="+",
        default=None,
        help="1-based vision layers of the feature levels (default: evenly spaced, 6 12 18 24 for ViT-L)",
    )
    parser.add_argument(
        "--text-adapter-weight",
        type=float,
        default=REFERENCE_ADAPTER_WEIGHT,
        help="text fusion weight lambda (default: %(default)s)",
    )
    parser.add_argument(
        "--vision-adapter-weight",
        type=float,
        default=REFERENCE_ADAPTER_WEIGHT,
        help="vision fusion weight lambda (default: %(default)s)",
    )
    parser.add_argument(
        "--anchor-classes",
        nargs="+",
        default=None,
        help="class names to store anchors for (default: every reference dataset class, bare and "
        "dataset-prefixed, e.g. bottle and mvtec/bottle; 'object' is always added)",
    )
    add_common_arguments(parser, image_size_default=REFERENCE_IMAGE_SIZE, act_default=REFERENCE_HIDDEN_ACT)


def run_original(args: argparse.Namespace) -> int:
    from ..conversion.original import (
        convert_original,
    )
    from ..runtime.loading import check_model_source

    check_model_source(args.clip, "--clip", kind="file or folder")
    convert_original(
        args.clip,
        args.output,
        text_adapter=args.text_adapter,
        image_adapter=args.image_adapter,
        image_size=args.image_size,
        hidden_act=args.hidden_act,
        feature_layers=args.feature_layers,
        text_adapter_weight=args.text_adapter_weight,
        vision_adapter_weight=args.vision_adapter_weight,
        anchor_classes=args.anchor_classes,
        text_heads=args.text_heads,
        vision_heads=args.vision_heads,
        seed=args.seed,
        verify=args.verify,
        verify_atol=args.verify_atol,
    )
    publish(args, args.output)
    return 0
