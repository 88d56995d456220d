"""`python -m facekd ...`, which is also what `torchrun -m facekd` runs."""

import sys

from facekd.cli import main

sys.exit(main())
