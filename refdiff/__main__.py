"""``python -m refdiff``: the same command line as the ``refdiff`` script (refdiff.cli)."""

import sys

from refdiff.cli import main

if __name__ == "__main__":
    sys.exit(main())
