"""``python -m aaclip_hf.training ...`` and ``accelerate launch -m aaclip_hf.training ...``."""

import sys

from .trainer import main


if __name__ == "__main__":
    sys.exit(main())
