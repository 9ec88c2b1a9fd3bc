"""``python -m vdigui.cli`` runs vdictl."""

import sys

from vdigui.cli import main

sys.exit(main())
