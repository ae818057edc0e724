"""`aaclip evaluate`: per-class and mean metrics in the paper's protocol and table layout."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from .parsing import add_command


def register(subparsers) -> None:
    add_command(
        subparsers,
        "evaluate",
        "Per-class and mean AUROC/AP/F1-max/AUPRO, error rates at each class's threshold, per-image scores.",
        run_evaluate,
        add_evaluate_arguments,
    )


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.readers import DATA_SPEC_HELP
    from ..evaluation.anomaly_metrics.exact_metrics import DEFAULT_FPR_LIMIT
    from ..evaluation.few_shot import DEFAULT_FEW_SHOT_SEED
    from ..evaluation.protocols import PROTOCOLS, RESOLUTIONS
    from ..runtime.backends import add_backend_arguments
    from ..runtime.batching import add_batch_size_argument
    from ..runtime.devices import add_dtype_argument

    parser.add_argument("--model", required=True, help="AA-CLIP folder or Hub id")
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        help=DATA_SPEC_HELP,
    )
    parser.add_argument("--split", default="test", help="split to read (default: test)")
    parser.add_argument("--classes", nargs="+", default=None, help="evaluate only these classes")
    parser.add_argument(
        "--dataset-name", default=None, help="name in the tables and model card (default: folder name)"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="reference",
        help="image scores: reference (per-class min-max fusion, the paper's) or per-image (model's own)",
    )
    parser.add_argument(
        "--few-shot",
        type=int,
        default=None,
        metavar="K",
        help="few-shot evaluation (WinCLIP/APRIL-GAN protocol): per class, K normal images drawn from "
        "--reference-split form a reference bank, and every test image is also scored against it; pixel metrics "
        "use the fused probability map (config.few_shot_fusion). Default: zero-shot",
    )
    parser.add_argument(
        "--no-references",
        dest="use_references",
        action="store_false",
        help="score zero-shot even for classes with stored normal references (default: use them, as aaclip detect "
        "does; --few-shot K draws new ones instead)",
    )
    parser.add_argument(
        "--few-shot-seed",
        type=int,
        default=DEFAULT_FEW_SHOT_SEED,
        help=f"seed of the reference draw, one generator per class (default {DEFAULT_FEW_SHOT_SEED})",
    )
    parser.add_argument(
        "--reference-split",
        default="train",
        help="split the few-shot references are drawn from (default: train); reference images found in --split "
        "are left out of the scoring",
    )
    parser.add_argument(
        "--resolution",
        choices=RESOLUTIONS,
        default="model",
        help="pixel metrics at the model input size (reference) or each image's original size",
    )
    parser.add_argument("--domain", default="auto", help="auto (by class name), industrial or medical")
    parser.add_argument(
        "--aupro-variant",
        choices=("mvtec", "cflow"),
        default="mvtec",
        help="mvtec: reference AUPRO (interpolated at the limit, / limit); cflow: APRIL-GAN/AnomalyCLIP",
    )
    parser.add_argument("--fpr-limit", type=float, default=DEFAULT_FPR_LIMIT, help="AUPRO FPR limit (default 0.3)")
    add_batch_size_argument(parser)
    add_backend_arguments(parser)
    parser.add_argument("--num-workers", type=int, default=2, help="image loading processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    add_dtype_argument(parser, default="float32")
    parser.add_argument(
        "--skip-bad-files", action="store_true", help="drop unreadable files (logged) instead of failing"
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept metadata paths that lead outside the dataset root (refused by default)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="folder for results.json, results.csv, results.md, scores.csv (every image's score) and pictures/ "
        "(per class: score histogram with the class's threshold, ROC curve): written whole when the run ends, an "
        "earlier run's results replaced; refused while another run writes it (lock file OUTPUT.lock)",
    )
    parser.add_argument("--no-progress", action="store_true")


def run_evaluate(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from ..runtime.outputs import output_lock

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`
        accelerator = Accelerator()
        args.device = str(accelerator.device)
    # One run at a time per --output (aaclip_hf.runtime.outputs): the main process holds the lock throughout.
    main_process = accelerator is None or accelerator.is_main_process
    with output_lock(args.output, "aaclip evaluate") if main_process else contextlib.nullcontext():
        return _evaluate_and_save(args, accelerator)


def _evaluate_and_save(args: argparse.Namespace, accelerator) -> int:
    from ..data.readers import load_samples
    from ..data.samples import verify_samples
    from ..evaluation.few_shot import stored_references
    from ..evaluation.protocols import evaluate
    from ..runtime.backends import apply_backend
    from ..runtime.loading import load_model_and_processor
    from .backend_options import backend_options

    samples = load_samples(
        args.data,
        args.split,
        classes=args.classes,
        skip_bad_files=args.skip_bad_files,
        allow_outside_root=args.allow_outside_root,
    )
    skipped = 0
    if args.skip_bad_files:  # decode every file up front: a corrupt image is dropped here instead of ending the run
        kept = verify_samples(samples, skip_bad_files=True, progress=not args.no_progress)
        skipped, samples = len(samples) - len(kept), kept
    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    model, _ = apply_backend(model, args.backend, args.quantize, **backend_options(args))
    # after the backend: the banks' patches come from the same tower as the test images'
    if args.few_shot is not None:
        references = _few_shot_references(args, model, processor, samples)
    elif args.use_references:
        references = stored_references(model, list(dict.fromkeys(sample.class_name for sample in samples)))
    else:
        references = None
    name = args.dataset_name or os.path.basename(os.path.normpath(args.data[0].split("::")[0]))
    result = evaluate(
        model,
        processor,
        samples,
        protocol=args.protocol,
        resolution=args.resolution,
        batch_size=args.batch_size,
        domain=args.domain,
        aupro_variant=args.aupro_variant,
        fpr_limit=args.fpr_limit,
        num_workers=args.num_workers,
        dataset_name=name,
        split=args.split,
        progress=not args.no_progress,
        accelerator=accelerator,
        references=references,
    )
    if result is None:
        return 0
    if skipped:
        result.notes.append(
            f"{skipped} image(s) skipped as unreadable or with a mask of another size (--skip-bad-files)"
        )
    result.settings["model"] = args.model
    result.settings["data"] = list(args.data)
    paths = result.save(args.output, lock=False)
    shots = "zero-shot" if references is None else references.describe()
    print(f"\n{name}: {shots}, {args.protocol} protocol, pixel metrics at {args.resolution} resolution (%)\n")
    print(result.to_markdown())
    for note in result.notes:
        print(f"note: {note}")
    _print_operating_points(result)
    print(f"\nwrote {paths['json']}, {paths['csv']}, {paths['markdown']}, {paths['scores']} and {paths['pictures']}/")
    return 0


def _few_shot_references(args: argparse.Namespace, model, processor, samples):
    """The reference bank of every evaluated class: `--few-shot` normal images drawn from `--reference-split`."""
    from ..data.readers import load_samples
    from ..data.samples import verify_samples
    from ..evaluation.few_shot import build_references

    class_names = list(dict.fromkeys(sample.class_name for sample in samples))
    reference_samples = load_samples(
        args.data, args.reference_split, skip_bad_files=args.skip_bad_files, allow_outside_root=args.allow_outside_root
    )
    if args.skip_bad_files:
        reference_samples = verify_samples(reference_samples, skip_bad_files=True, progress=not args.no_progress)
    return build_references(
        model, processor, reference_samples, class_names, args.few_shot, args.few_shot_seed, args.reference_split
    )


def _print_operating_points(result) -> None:
    """One line per class with a threshold: the false-reject and escape rates at it."""
    for name, row in result.classes.items():
        point = row.get("operating_point")
        if point is None:
            continue
        rates = ", ".join(
            f"{what} {point[f'{key}s']}/{point[total]} ({100 * point[f'{key}_rate']:.1f}%)"
            for what, key, total in (
                ("false rejects", "false_reject", "num_normal"),
                ("escapes", "escape", "num_anomalous"),
            )
            if point[f"{key}_rate"] is not None
        )
        source = "calibrated" if row["threshold_calibrated"] else "fallback"
        print(f"{name}: threshold {point['threshold']:.4f} ({source}): {rates}")
