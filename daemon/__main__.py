"""`python -m daemon [serve options]` runs the daemon, like `magnet-rt serve`."""

from daemon.server import main

raise SystemExit(main())
