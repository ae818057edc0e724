"""`aaclip app MODEL`: serve the Gradio app (aaclip_hf/hub/space_app.py, the same file a Space runs as app.py)."""

from __future__ import annotations

import argparse
import os

from .parsing import add_command


# The app's default address: this machine only; `--host 0.0.0.0` serves the network, `--share` a public link.
DEFAULT_HOST = "127.0.0.1"
INSTALL_HINT = "the app needs gradio: pip install 'aaclip-hf[app]'"


def register(subparsers) -> None:
    help_text = (
        "Serve the Gradio app: upload an image, pick the class (its own threshold and stored references are used), "
        "optionally add normal reference images, see the heat map and the decision; also a Space's app.py."
    )
    add_command(subparsers, "app", help_text, run_app, add_app_arguments)


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    from ..runtime.backends import add_backend_arguments

    parser.add_argument(
        "model", help="AA-CLIP model folder or Hub id (loaded by the checked loader with the installed classes)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (as on Spaces)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs network)")
    parser.add_argument("--device", default=None, help="torch device for the model (default: the pipeline's)")
    add_backend_arguments(parser)


def _installed_pipeline(model: str, device=None):
    """The app's pipeline from the installed package: the folder's remote code is never imported or run."""
    from ..inference.detect import make_pipeline
    from ..runtime.loading import load_model_and_processor

    return make_pipeline(*load_model_and_processor(model, device))


def run_app(args: argparse.Namespace) -> int:
    from ..errors import InvalidInputError, MissingExtraError
    from ..runtime.backends import apply_backend
    from ..runtime.loading import check_model_source
    from .backend_options import backend_options

    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be in 1..65535, got {args.port}")
    check_model_source(args.model, "model")  # a missing folder is named here, not by a traceback about the network
    # Offline-friendly by default: no usage reports to gradio's servers unless the environment asks for them.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from ..hub import space_app  # gradio is an optional extra, imported only for this command
    except ImportError as error:
        raise MissingExtraError(f"{INSTALL_HINT} ({error})") from error
    backend, quantize = getattr(args, "backend", "auto"), getattr(args, "quantize", "none")
    options = backend_options(args)

    def prepare(model) -> None:
        apply_backend(model, backend, quantize, **options)

    space_app.main(
        args.model,
        host=args.host,
        port=args.port,
        share=args.share,
        device=args.device,
        prepare=prepare,
        load=_installed_pipeline,
    )
    return 0
