"""``python -m ratebudget``: the same command line as ``ratebudget``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
