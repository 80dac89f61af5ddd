"""``python -m mnv4 COMMAND ...``: the same as the ``mnv4`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
