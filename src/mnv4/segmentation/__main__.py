"""``python -m mnv4.segmentation ACTION ...`` and ``torchrun --nproc-per-node N -m mnv4.segmentation train ...``: the
same as ``mnv4 segment ACTION ...``."""

import sys

from ..cli.segment import main

if __name__ == "__main__":
    sys.exit(main())
