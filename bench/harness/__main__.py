"""``python -m bench.harness``: run the benchmark (see :mod:`bench.harness.cli`)."""

import sys

from bench.harness.cli import main

sys.exit(main())
