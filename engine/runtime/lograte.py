"""An error that repeats, logged once with its traceback, then counted.

Why: while the journal's PostgreSQL is away every use of it fails: the supervisor's passes (up to
20 a second), the scoring ticks that snapshot detector states, each commit. Logged each time,
that was ~30 tracebacks a second (129 in a 4 s outage), burying the one line that says what broke
and filling disks. ``Repeating`` logs the first failure whole, then at most one line per
``every_s`` with how many failed since, and one line when it works again.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

EVERY_S = 30.0


class Repeating:
    """One place that can fail again and again (``what`` names it in the log)."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self.what, self._every_s, self._clock = logger, what, every_s, clock
        self._lock = threading.Lock()
        self.failures = 0  # since it last worked
        self._since = self._told = 0.0
        self._untold = 0

    def failed(self, message: str, *args: object) -> None:
        """Call from inside ``except``: the first failure is logged with its traceback, a repeat
        only as a count once ``every_s`` has passed since the last line."""
        now = self._clock()
        with self._lock:
            self.failures += 1
            if self.failures == 1:
                self._since = self._told = now
                self._log.error(message, *args, exc_info=True)
                return
            self._untold += 1
            if now - self._told < self._every_s:
                return
            self._told, untold, self._untold = now, self._untold, 0
        error = sys.exc_info()[1]
        self._log.error(
            "%s: still failing, %d more time(s) in the last %.0f s (%d since %.0f s ago); last: %s",
            self.what,
            untold,
            self._every_s,
            self.failures,
            now - self._since,
            error,
        )

    def worked(self) -> None:
        """It worked: say so once if it had failed."""
        if not self.failures:  # the hot path: no lock while all is well
            return
        with self._lock:
            failures, since, self.failures, self._untold = self.failures, self._since, 0, 0
        if failures:
            self._log.warning(
                "%s works again after %d failure(s) over %.1f s", self.what, failures, self._clock() - since
            )
