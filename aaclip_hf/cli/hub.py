"""`aaclip push` and `aaclip export-onnx`: publish a model folder."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .parsing import add_command


def register(subparsers) -> None:
    add_command(
        subparsers,
        "push",
        "Upload a model folder to the Hub with its code, pipeline code and a model card.",
        run_push,
        add_push_arguments,
    )
    add_command(
        subparsers,
        "push-metric",
        "Upload the `evaluate` metric module as a Hub Space that evaluate.load reads.",
        run_push_metric,
        add_push_metric_arguments,
    )
    add_command(
        subparsers,
        "export-onnx",
        "Export the vision path with stored anchors (and a fixed class's references) to ONNX.",
        run_export_onnx,
        add_export_onnx_arguments,
    )


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    from ..hub.publish import (
        DEFAULT_CARD_COLUMNS,
        DEFAULT_CARD_IMAGES,
        DEFAULT_CARD_TILE_WIDTH,
    )

    parser.add_argument("model_dir", help="a folder written by save_pretrained (aaclip train / convert / calibrate)")
    parser.add_argument("repo_id", help="Hub repository, e.g. your-name/aaclip-vitl14-visa")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--eval-results",
        nargs="+",
        default=None,
        metavar="JSON",
        help="results.json file(s) from `aaclip evaluate`: their tables go into the card, the files into eval_results/",
    )
    parser.add_argument(
        "--eval-dir",
        nargs="+",
        default=[],
        metavar="DIR",
        help="evaluation folder(s): results.json as with --eval-results, and overlay PNGs (DIR/overlays/*.png, "
        "as `aaclip detect` writes) tiled into the card's picture",
    )
    parser.add_argument(
        "--card-images",
        type=int,
        default=DEFAULT_CARD_IMAGES,
        help="overlays in the card's picture grid (default: %(default)s; 0: no picture)",
    )
    parser.add_argument(
        "--card-columns",
        type=int,
        default=DEFAULT_CARD_COLUMNS,
        help="columns of the picture grid (default: %(default)s)",
    )
    parser.add_argument(
        "--card-tile-width",
        type=int,
        default=DEFAULT_CARD_TILE_WIDTH,
        help="width in pixels of each overlay in the grid (default: %(default)s)",
    )
    parser.add_argument("--onnx", default=None, metavar="FILE", help="also publish this `aaclip export-onnx` graph")
    parser.add_argument(
        "--with-app",
        action="store_true",
        help="add the Gradio app (app.py, requirements.txt, Space metadata in the card) and push as a Space",
    )
    parser.add_argument("--base-model", default=None, help="Hub id of the CLIP the model was built on (card metadata)")
    parser.add_argument(
        "--license", default="mit", help="licence identifier for the card (default: mit, the CLIP weights')"
    )
    _add_upload_arguments(
        parser,
        "upload nothing: print the exact file list with sizes and what is left out; with DIR, also write the "
        "Hub folder there (an empty or new folder)",
    )


def _add_upload_arguments(parser: argparse.ArgumentParser, dry_run_help: str) -> None:
    """The flags every upload shares: token, commit message and `--dry-run [DIR]`."""
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login / HF_TOKEN)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dry-run", nargs="?", const="", default=None, metavar="DIR", help=dry_run_help)


def run_push(args: argparse.Namespace) -> int:
    """Stage the folder by allowlist (checked weights, card), then upload it or, with --dry-run, list it."""
    from ..hub.card import load_json
    from ..hub.publish import (
        stage_hub_folder,
        upload_hub_folder,
    )
    from ..modeling.pipeline_aaclip import TASK

    eval_results = [load_json(path, "eval results") for path in args.eval_results] if args.eval_results else None
    options = {
        "repo_id": args.repo_id,
        "eval_results": eval_results,
        "eval_dirs": args.eval_dir,
        "base_model": args.base_model,
        "license": args.license,
        "onnx": args.onnx,
        "with_app": args.with_app,
        "card_images": args.card_images,
        "card_columns": args.card_columns,
        "card_tile_width": args.card_tile_width,
    }
    with tempfile.TemporaryDirectory(prefix="aaclip-push-") as tmp:
        target = Path(args.dry_run) if args.dry_run else Path(tmp) / "hub"
        staged = stage_hub_folder(args.model_dir, target, **options)
        kind = "Space" if staged.repo_type == "space" else "model repo"
        if args.dry_run is not None:
            where = f"written to {target}" if args.dry_run else "not kept (give --dry-run DIR to keep it)"
            print(f"dry run: nothing uploaded to {kind} {args.repo_id}; the Hub folder is {where}")
            print(staged.listing())
            return 0
        url = upload_hub_folder(
            staged, args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message
        )
    print(f"pushed {args.model_dir} to {kind} {args.repo_id} ({url})")
    print(staged.listing())
    print(f'use it with: pipeline("{TASK}", model="{args.repo_id}", trust_remote_code=True)')
    return 0


def add_push_metric_arguments(parser: argparse.ArgumentParser) -> None:
    from ..hub.metric import DEFAULT_METRIC_REPO

    parser.add_argument(
        "repo_id",
        nargs="?",
        default=None,
        help=f"Hub Space for the metric, owner/name with an identifier name (default with --dry-run: "
        f"{DEFAULT_METRIC_REPO}); `evaluate.load(repo_id)` then loads it",
    )
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    _add_upload_arguments(
        parser, "upload nothing: print the file list with sizes; with DIR, also write the metric folder there"
    )


def run_push_metric(args: argparse.Namespace) -> int:
    """Write the `evaluate` metric module as a Space folder, then upload it or, with --dry-run, list it."""
    from ..errors import InvalidInputError
    from ..hub.metric import DEFAULT_METRIC_REPO, push_metric_to_hub, stage_metric_folder

    if args.dry_run is None:
        if not args.repo_id:
            raise InvalidInputError("push-metric: give the Hub Space id (owner/name), or --dry-run [DIR] to only list")
        url = push_metric_to_hub(
            args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message
        )
        print(f"pushed the metric to Space {args.repo_id} ({url})")
        print(f'use it with: evaluate.load("{args.repo_id}")')
        return 0
    repo_id = args.repo_id or DEFAULT_METRIC_REPO
    with tempfile.TemporaryDirectory(prefix="aaclip-metric-") as tmp:
        target = Path(args.dry_run) if args.dry_run else Path(tmp) / "metric"
        staged = stage_metric_folder(target, repo_id)
        where = f"written to {target}" if args.dry_run else "not kept (give --dry-run DIR to keep it)"
        print(f"dry run: nothing uploaded to Space {repo_id}; the metric folder is {where}")
        print(staged.listing())
    return 0


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    from ..hub.onnx_export import DEFAULT_OPSET

    parser.add_argument("model", help="AA-CLIP model folder (save_pretrained output; full or inference-only)")
    parser.add_argument("output", help="path of the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--domain", default=None, help="smoothing / image-score domain baked in (default: config)")
    parser.add_argument(
        "--fixed-class",
        default=None,
        help="bake one stored class in (graph input: pixel_values only), with its stored references (few-shot) when "
        "it has some; default: a class_index input over all stored classes, zero-shot (references left out)",
    )
    parser.add_argument("--check", action="store_true", help="run the graph in onnxruntime against torch")


def run_export_onnx(args: argparse.Namespace) -> int:
    from ..hub.onnx_export import check_onnx, export_onnx
    from ..runtime.loading import load_model
    from ..runtime.outputs import check_new_file, check_output_apart

    check_output_apart(args.output, inputs=[], model=args.model, what="output")
    check_new_file(args.output, "output")  # never onto the weights or any other file
    model, _ = load_model(args.model, device="cpu")
    path = export_onnx(model, args.output, opset=args.opset, domain=args.domain, fixed_class=args.fixed_class)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); classes: {model.stored_class_names}")
    stored = model.config.reference_classes
    if args.fixed_class in stored:
        print(f"few-shot: with the {stored[args.fixed_class]['images']} stored reference images of {args.fixed_class}")
    elif args.fixed_class is None and stored:
        print(
            f"note: the stored references of {', '.join(stored)} are not in a class_index graph (zero-shot scores); "
            "export one class with --fixed-class NAME to include its references"
        )
    if args.check:
        diff = check_onnx(model, path, domain=args.domain, fixed_class=args.fixed_class)
        print(f"onnxruntime vs torch, max |diff| per output: {diff}")
    return 0
