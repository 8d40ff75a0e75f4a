"""`python -m rltui.cli ...`, the same as the `rltui` script."""

import sys

from rltui.cli.main import main

sys.exit(main())
