"""``python -m mnv4.detection ACTION ...`` and ``torchrun --nproc-per-node N -m mnv4.detection train ...``: the same
as ``mnv4 detect ACTION ...``."""

import sys

from ..cli.detect import main

if __name__ == "__main__":
    sys.exit(main())
