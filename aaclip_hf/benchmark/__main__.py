"""``python -m aaclip_hf.benchmark ...``: the `aaclip bench` subcommand (same flags, same error boundary)."""

import sys

from ..cli import main


if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
