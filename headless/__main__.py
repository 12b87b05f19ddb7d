"""`python -m headless run WORKFLOW ...`."""

import sys

from .cli import main

sys.exit(main())
