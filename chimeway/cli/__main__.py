"""``python -m chimeway.cli``."""

import sys

from chimeway.cli import main

sys.exit(main())
