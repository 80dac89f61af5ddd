"""``python -m mnv4.nas ...`` = ``mnv4 search ...`` (and ``torchrun --nproc-per-node N -m mnv4.nas ...``)."""

import sys

from ..cli.search import main

sys.exit(main())
