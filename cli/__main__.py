"""`python -m skiporacle.cli ...` runs the `skiporacle` command."""

import sys

from skiporacle.cli.main import main

sys.exit(main())
