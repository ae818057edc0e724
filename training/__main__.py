"""``python -m aaclip_hf.training ...`` and ``accelerate launch -m aaclip_hf.training ...``: `aaclip train`."""

import sys

from ..cli.train import main


if __name__ == "__main__":
    sys.exit(main())
