"""``python -m workbench.experiments``: see :mod:`workbench.experiments.cli`."""

import sys

from .cli import main

sys.exit(main())
