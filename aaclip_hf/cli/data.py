"""`aaclip make-synthetic`, `aaclip sample-shots` and `aaclip export-dataset`: data you can train and evaluate on."""

from __future__ import annotations

import argparse
import os
import sys

from .parsing import add_command


def register(subparsers) -> None:
    add_command(
        subparsers,
        "make-synthetic",
        "Write a synthetic defect dataset (MVTec layout) with exact masks.",
        run_make_synthetic,
        add_make_synthetic_arguments,
    )
    add_command(
        subparsers,
        "sample-shots",
        "Draw a k-shot split (k/2 normal + k/2 anomalous per class) as JSON-lines.",
        run_sample_shots,
        add_sample_shots_arguments,
    )
    add_command(
        subparsers,
        "export-dataset",
        "Write any supported layout as a Hugging Face datasets folder (save_to_disk) with a dataset card.",
        run_export_dataset,
        add_export_dataset_arguments,
    )


def add_make_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.synthetic import (
        DEFAULT_NOISE_STD,
        DEFECT_KINDS,
        SYNTHETIC_CLASSES,
    )

    parser.add_argument(
        "output_dir",
        help="folder to write (MVTec layout): new or empty, or an untouched earlier make-synthetic output (replaced)",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        choices=list(SYNTHETIC_CLASSES),
        metavar="CLASS",
        help=f"classes to draw (default: all of {', '.join(SYNTHETIC_CLASSES)})",
    )
    parser.add_argument(
        "--defect-kinds",
        nargs="+",
        default=list(DEFECT_KINDS),
        choices=list(DEFECT_KINDS),
        metavar="KIND",
        help=f"defect kinds (default: all of {', '.join(DEFECT_KINDS)})",
    )
    parser.add_argument("--image-size", type=int, default=128, help="side length in pixels (default 128)")
    parser.add_argument("--n-train-good", type=int, default=16, help="normal training images per class (default 16)")
    parser.add_argument("--n-test-good", type=int, default=8, help="normal test images per class (default 8)")
    parser.add_argument(
        "--n-test-defect-per-kind", type=int, default=2, help="test images per class and defect kind (default 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--noise-std",
        type=float,
        default=DEFAULT_NOISE_STD,
        help=f"sensor noise std in 8-bit levels (default {DEFAULT_NOISE_STD})",
    )
    parser.add_argument("--preview", default=None, metavar="PNG", help="also save a contact sheet of the result")


def run_make_synthetic(args: argparse.Namespace) -> int:
    from ..data.synthetic import (
        SYNTHETIC_HELD_OUT_CLASSES,
        SYNTHETIC_TRAIN_CLASSES,
        generate_synthetic_dataset,
        preview_grid,
    )
    from ..errors import InvalidInputError
    from ..runtime.outputs import atomic_output_dir, check_new_file

    if args.image_size < 16:
        raise InvalidInputError(f"--image-size must be at least 16, got {args.image_size}")
    preview_inside = args.preview is not None and _inside(args.preview, args.output_dir)
    if args.preview is not None and not preview_inside:
        check_new_file(args.preview, "--preview")
    # Written whole into a new folder; an existing one only when it is an untouched earlier make-synthetic output.
    with atomic_output_dir(args.output_dir, "aaclip make-synthetic") as staging:
        generate_synthetic_dataset(
            staging,
            classes=args.classes,
            image_size=args.image_size,
            n_train_good=args.n_train_good,
            n_test_good=args.n_test_good,
            n_test_defect_per_kind=args.n_test_defect_per_kind,
            defect_kinds=args.defect_kinds,
            seed=args.seed,
            noise_std=args.noise_std,
        )
        if preview_inside:
            relative = os.path.relpath(os.path.abspath(args.preview), os.path.abspath(args.output_dir))
            preview_grid(staging, staging / relative)
    root = args.output_dir
    print(f"wrote the synthetic dataset to {root}")
    print(
        f"suggested train classes:    {', '.join(c for c in SYNTHETIC_TRAIN_CLASSES if args.classes is None or c in args.classes)}"
    )
    print(
        f"suggested held-out classes: {', '.join(c for c in SYNTHETIC_HELD_OUT_CLASSES if args.classes is None or c in args.classes)}"
    )
    if args.preview is not None:
        print(f"preview: {args.preview if preview_inside else preview_grid(root, args.preview)}")
    return 0


def _inside(path: str, folder: str) -> bool:
    """Whether `path` lies inside `folder` (real paths)."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base and real != base


def data_spec_paths(specs) -> list[str]:
    """The paths a list of data specs reads (`PATH::key=value`: the path and its `root=`)."""
    from ..data.readers import parse_spec

    paths = []
    for spec in specs:
        path, options = parse_spec(spec)
        paths += [path] + ([options["root"]] if options.get("root") else [])
    return paths


def _add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    """The `load_samples` options of the commands that read a dataset."""
    parser.add_argument("--format", default=None, help="dataset layout, if auto-detection is wrong")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept image paths that lead outside the dataset root (refused by default; export-dataset also "
        "refuses symbolic links that lead outside, as it copies the files)",
    )


def _print_classes(samples) -> None:
    from ..data.samples import summarize_samples

    print(f"{'class':<24} {'normal':>6} {'anomaly':>7}")
    for cls, row in summarize_samples(samples).items():
        print(f"{cls:<24} {row['normal']:>6} {row['anomaly']:>7}")


def add_sample_shots_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.readers import DATA_SPEC_HELP
    from ..data.sampling import DEFAULT_SHOT_SEED

    parser.add_argument("data", nargs="+", help=DATA_SPEC_HELP)
    parser.add_argument(
        "--shots", required=True, help="images per class, even (k/2 normal + k/2 anomalous), or 'full'"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SHOT_SEED,
        help=f"random seed (default {DEFAULT_SHOT_SEED}, as the reference)",
    )
    parser.add_argument(
        "--output", required=True, help="JSON-lines file to write (a new file: an existing one is never replaced)"
    )
    parser.add_argument(
        "--split", default="test", help="split to draw from (default 'test', as the reference's VisA training data)"
    )
    parser.add_argument(
        "--relative-to", default=None, help="write paths relative to this folder (default: the output file's folder)"
    )
    _add_reader_arguments(parser)


def run_sample_shots(args: argparse.Namespace) -> int:
    from ..data.readers import is_inside, load_samples
    from ..data.sampling import parse_shots, sample_shots, write_jsonl
    from ..runtime.outputs import check_new_file, check_output_apart

    parse_shots(args.shots)  # the arguments first, then the output: never onto the data read, never onto a file
    check_output_apart(args.output, inputs=data_spec_paths(args.data), what="--output")
    check_new_file(args.output, "--output")
    samples = load_samples(args.data, args.split, format=args.format, allow_outside_root=args.allow_outside_root)
    picked = sample_shots(samples, args.shots, seed=args.seed)
    write_jsonl(picked, args.output, relative_to=args.relative_to)
    base = args.relative_to or os.path.dirname(os.path.abspath(args.output))
    if not all(is_inside(base, p) for s in picked for p in (s.image_path, s.mask_path) if p is not None):
        print(
            f"note: some paths lead outside {base}; read the file with --allow-outside-root, or write it with "
            "--relative-to DATASET_FOLDER and read it as FILE::root=DATASET_FOLDER",
            file=sys.stderr,
        )
    _print_classes(picked)
    print(f"wrote {len(picked)} samples ({args.shots}-shot, seed {args.seed}) to {args.output}")
    return 0


def add_export_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.readers import DATA_SPEC_HELP

    parser.add_argument("data", nargs="+", help=DATA_SPEC_HELP)
    parser.add_argument("--output", required=True, help="folder to write (new or empty)")
    parser.add_argument(
        "--split", default="test", help="split to read, also the split's name in the written dataset (default test)"
    )
    parser.add_argument(
        "--name", default=None, help="the dataset's name in its card (default: the output folder name)"
    )
    _add_reader_arguments(parser)


def run_export_dataset(args: argparse.Namespace) -> int:
    # The export copies each file's bytes into a dataset meant to be shared: a path or a symbolic link that leads
    # outside the dataset root (/etc/..., a home folder) is refused, naming the record and the path.
    from ..data.hf_datasets import export_dataset
    from ..data.readers import load_samples, parse_spec
    from ..runtime.outputs import check_output_apart

    check_output_apart(args.output, inputs=data_spec_paths(args.data), what="--output")
    samples = load_samples(
        args.data, args.split, format=args.format, allow_outside_root=args.allow_outside_root, resolve_links=True
    )
    # The card names the sources by folder/file name only: no local paths in a file meant to be shared.
    source = ", ".join(os.path.basename(os.path.normpath(parse_spec(spec)[0])) for spec in args.data)
    out = export_dataset(samples, args.output, split=args.split, name=args.name, source=source)
    _print_classes(samples)
    print(f"wrote {len(samples)} images to {out} (datasets save_to_disk, split {args.split!r}, card README.md)")
    return 0
