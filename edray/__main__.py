"""``python -m edray``: the same command line as the ``edray`` script."""

import sys

from edray.cli import main

sys.exit(main())
