"""`interlock` with this process's clock shifted by ``SKEWED_CLOCK_SECONDS`` (say 8 or -8).

Only tests/test_clock.py starts it (``python -m tests.skewed_worker worker …``), to show that a
worker on a host whose clock is off still fires timers, keeps leases and starts steps on
time by the database's clock. The shift is applied before anything else is imported, so
libraries that copy ``time.time`` at import (Dramatiq's eta stamps) see it too.
"""

import os
import time

_SHIFT = float(os.environ["SKEWED_CLOCK_SECONDS"])
_real_time = time.time
time.time = lambda: _real_time() + _SHIFT

from engine.cli import main  # noqa: E402  (after the shift)

if __name__ == "__main__":
    main()
