"""`python -m cli ARGS` is `magnet-rt ARGS`."""

import sys

from cli.main import main

sys.exit(main())
