"""`aaclip push` and `aaclip export-onnx`: publish a model folder."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ..hub.onnx_export import DEFAULT_OPSET, check_onnx, export_onnx
from ..hub.publish import NOT_UPLOADED, load_json, prepare_hub_folder, push_folder_to_hub
from ..modeling.modeling_aaclip import AAClipModel
from ..modeling.pipeline_aaclip import TASK


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a folder written by save_pretrained (aaclip train / convert / calibrate)")
    parser.add_argument("repo_id", help="Hub repository, e.g. your-name/aaclip-vitl14-visa")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--eval-results",
        nargs="+",
        default=None,
        metavar="JSON",
        help="results.json file(s) from `aaclip evaluate`; their class means go into the model card",
    )
    parser.add_argument("--base-model", default=None, help="Hub id of the CLIP the model was built on (card metadata)")
    parser.add_argument(
        "--license", default="mit", help="licence identifier for the card (default: mit, the CLIP weights')"
    )
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login / HF_TOKEN)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument(
        "--dry-run",
        metavar="DIR",
        default=None,
        help="write the completed Hub folder to DIR instead of uploading (check the card and files first)",
    )


def run_push(args: argparse.Namespace) -> int:
    eval_results = [load_json(path, "eval results") for path in args.eval_results] if args.eval_results else None
    if args.dry_run:
        target = Path(args.dry_run)
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(f"--dry-run folder {target} is not empty")
        shutil.copytree(args.model_dir, target, dirs_exist_ok=True, ignore=NOT_UPLOADED)
        prepare_hub_folder(
            target, repo_id=args.repo_id, eval_results=eval_results, base_model=args.base_model, license=args.license
        )
        print(
            f"Hub-ready folder written to {target} (nothing uploaded); files: {sorted(p.name for p in target.iterdir())}"
        )
        return 0
    url = push_folder_to_hub(
        args.model_dir,
        args.repo_id,
        private=args.private,
        token=args.token,
        commit_message=args.commit_message,
        eval_results=eval_results,
        base_model=args.base_model,
        license=args.license,
    )
    print(f"pushed {args.model_dir} to https://huggingface.co/{args.repo_id} ({url})")
    print(f'use it with: pipeline("{TASK}", model="{args.repo_id}", trust_remote_code=True)')
    return 0


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="AA-CLIP model folder (save_pretrained output; full or inference-only)")
    parser.add_argument("output", help="path of the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--domain", default=None, help="smoothing / image-score domain baked in (default: config)")
    parser.add_argument(
        "--fixed-class",
        default=None,
        help="bake one stored class in (graph input: pixel_values only); default: a class_index input",
    )
    parser.add_argument("--check", action="store_true", help="run the graph in onnxruntime against torch")


def run_export_onnx(args: argparse.Namespace) -> int:

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir}: not an AA-CLIP model folder (no config.json)")
    model = AAClipModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    path = export_onnx(model, args.output, opset=args.opset, domain=args.domain, fixed_class=args.fixed_class)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); classes: {model.stored_class_names}")
    if args.check:
        diff = check_onnx(model, path, domain=args.domain, fixed_class=args.fixed_class)
        print(f"onnxruntime vs torch, max |diff| per output: {diff}")
    return 0
