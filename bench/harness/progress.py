"""Progress lines on stderr, stamped with the time of day."""

from __future__ import annotations

import sys
import time


def say(message: str) -> None:
    """Progress, on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
