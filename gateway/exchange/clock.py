"""The clock tolerance every party's checks share.

An issuer, a sending gateway and a receiving gateway each read their own clock; a
moment one of them stamps (an authorization's `nbf`, the Consent period's start taken
from it) may lie a little ahead of another's clock. Up to CLOCK_SKEW ahead is accepted
as "now"; further ahead is refused with a message naming the moment and the tolerance.
Ends (`exp`, the Consent period's end) get no tolerance: nothing is disclosed or
accepted after an authorization ends by the checking party's clock."""
from __future__ import annotations

from datetime import datetime, timedelta

# five minutes, as Kerberos and most JWT verifiers allow: clocks kept by NTP stay far
# inside it, and a clock further off should be fixed, not tolerated
CLOCK_SKEW = timedelta(minutes=5)


def started(start: datetime, now: datetime) -> bool:
    """Whether a period starting at `start` has begun by `now`, within the tolerance."""
    return now + CLOCK_SKEW >= start
