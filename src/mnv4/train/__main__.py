"""``python -m mnv4.train ...`` and ``torchrun --nproc-per-node N -m mnv4.train ...``: the same flags as
``mnv4 train``."""

import sys

from ..cli.train import main

if __name__ == "__main__":
    sys.exit(main())
