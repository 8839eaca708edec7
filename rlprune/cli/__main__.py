"""``python -m rlprune.cli``: the same as the ``rlprune`` console script."""

import sys

from rlprune.cli import main

sys.exit(main())
