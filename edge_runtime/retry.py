"""The one back-off between retries: a broker connection, a camera or stream being reopened."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry ``attempt`` (0 first): doubling from ``base`` up to ``cap``,
    each spread by ±25 % so that many devices do not all knock on a restarted broker (or a
    camera server) at once."""
    nominal = min(cap, base * 2.0 ** min(attempt, 32))
    jittered = nominal * (0.75 + 0.5 * rand())
    return max(base, min(cap, jittered))
