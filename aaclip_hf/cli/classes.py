"""`aaclip add-class` and `aaclip add-references`: store a new class's anchors, or a class's normal references, in a
copy of a model folder."""

from __future__ import annotations

import argparse

from .parsing import add_command


def register(subparsers) -> None:
    add_command(
        subparsers,
        "add-class",
        "Store the text anchors of new classes in a copy of a model (for ONNX export, the app, inference-only use).",
        run_add_class,
        add_add_class_arguments,
    )
    add_command(
        subparsers,
        "add-references",
        "Store a class's normal reference images (few-shot) in a copy of a model.",
        run_add_references,
        add_add_references_arguments,
    )


def _add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        required=True,
        help="the new model folder (never the model itself; written whole when the command ends)",
    )


def add_add_class_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="AA-CLIP folder or Hub id (with its text tower)")
    parser.add_argument("class_names", nargs="+", metavar="NAME", help="class names to store anchors for")
    _add_output_argument(parser)


def add_add_references_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.image_io import DEFAULT_MAX_SIDE
    from ..inference.references import DEFAULT_REFERENCE_SEED
    from ..modeling.modeling_aaclip import REFERENCE_AUGMENTATIONS

    parser.add_argument("model", help="AA-CLIP folder or Hub id")
    parser.add_argument("--class-name", required=True, help="the class the references belong to (stored anchors)")
    parser.add_argument("--images", required=True, nargs="+", help="normal image files and/or folders of the class")
    parser.add_argument("--shots", type=int, default=None, help="use K images drawn from --images (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_REFERENCE_SEED, help="seed of the draw and the coreset")
    parser.add_argument(
        "--augment",
        nargs="+",
        default=[],
        choices=sorted(REFERENCE_AUGMENTATIONS),
        help="also store rotated / flipped copies of each reference (parts that appear in any orientation)",
    )
    parser.add_argument(
        "--coreset-ratio",
        type=float,
        default=1.0,
        help="keep this share of the patches per level by greedy k-center selection (large K: smaller, faster)",
    )
    parser.add_argument(
        "--max-image-side", type=int, default=DEFAULT_MAX_SIDE, help="images larger than this are decoded reduced"
    )
    _add_output_argument(parser)


def _write_copy(model, processor, args: argparse.Namespace, command: str) -> None:
    from ..runtime.model_folder import save_model_folder
    from ..runtime.outputs import atomic_output_dir

    with atomic_output_dir(args.output, command) as staging:
        save_model_folder(model, processor, staging)


def run_add_class(args: argparse.Namespace) -> int:
    from ..runtime.loading import load_model_and_processor
    from ..runtime.outputs import check_output_apart

    check_output_apart(args.output, model=args.model)
    model, processor = load_model_and_processor(args.model, device="cpu")
    model.update_text_anchors(processor, args.class_names)
    _write_copy(model, processor, args, "aaclip add-class")
    print(f"stored anchors of {args.class_names} in {args.output} (classes: {len(model.stored_class_names)})")
    return 0


def run_add_references(args: argparse.Namespace) -> int:
    from ..inference.references import add_references_from_files
    from ..runtime.loading import load_model_and_processor
    from ..runtime.outputs import check_output_apart

    check_output_apart(args.output, inputs=args.images, model=args.model)
    model, processor = load_model_and_processor(args.model, device="cpu")
    used = add_references_from_files(
        model, processor, args.class_name, args.images, shots=args.shots, seed=args.seed,
        augmentations=args.augment, coreset_ratio=args.coreset_ratio, max_image_side=args.max_image_side,
    )  # fmt: skip
    _write_copy(model, processor, args, "aaclip add-references")
    record = model.config.reference_classes[args.class_name]
    size = record["patches"] * model.config.num_levels * model.config.projection_dim * model.dtype.itemsize
    print(
        f"{args.class_name}: {record['images']} normal reference(s) ({', '.join(image.name for image in used)}), "
        f"{record['patches']} patches per level, {size / 2**20:.1f} MiB, stored in {args.output}"
    )
    return 0
