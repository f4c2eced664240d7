"""Client-side requests-per-minute and tokens-per-minute limits (two token buckets).

Why client-side: hitting the provider's limit costs a 429 and a wait anyway; pacing requests
keeps a concurrent run under an account's quota without burning the retry budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Blocks `acquire` until one request and `tokens` tokens fit in the per-minute budgets."""

    def __init__(self, requests_per_minute: float = 0.0, tokens_per_minute: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._req = requests_per_minute  # buckets start full
        self._tok = tokens_per_minute
        self._last = clock()

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        self._last = now
        self._req = min(self.rpm, self._req + elapsed * self.rpm / 60.0)
        self._tok = min(self.tpm, self._tok + elapsed * self.tpm / 60.0)

    def acquire(self, tokens: int = 0) -> float:
        """Wait for capacity; returns the seconds waited. A request larger than the whole
        token budget is let through once the bucket is full, rather than waiting forever."""
        if self.rpm <= 0 and self.tpm <= 0:
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                self._refill(self._clock())
                need_tok = min(tokens, self.tpm) if self.tpm > 0 else 0
                wait = 0.0
                if self.rpm > 0 and self._req < 1:
                    wait = (1 - self._req) * 60.0 / self.rpm
                if self.tpm > 0 and self._tok < need_tok:
                    wait = max(wait, (need_tok - self._tok) * 60.0 / self.tpm)
                if wait <= 0:
                    if self.rpm > 0:
                        self._req -= 1
                    if self.tpm > 0:
                        self._tok -= need_tok
                    return waited
            self._sleep(wait)
            waited += wait
