"""Times as the Kubernetes API writes them (RFC 3339 in UTC, `Z`), formatted and parsed in one place.

Status fields (conditions, GPU-hours, calibration, runs) carry these strings;
the code in between works with aware `datetime`s. A time that cannot be read
is an error for the caller to report (`TimeError`), never silently replaced.
"""

from __future__ import annotations

from datetime import UTC, datetime


class TimeError(ValueError):
    """A status time that is not RFC 3339 with an offset."""


def format_time(moment: datetime) -> str:
    """`moment` (aware) in UTC to the second, as Kubernetes writes `lastTransitionTime`."""
    if moment.tzinfo is None:
        raise TimeError(f"a naive datetime has no place in a status: {moment!r}")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time_precise(moment: datetime) -> str:
    """`moment` in UTC with milliseconds (a router's counter slot orders reports within a second)."""
    if moment.tzinfo is None:
        raise TimeError(f"a naive datetime has no place in a status: {moment!r}")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """An RFC 3339 time with its offset; `TimeError` when it is not one."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError) as error:
        raise TimeError(f"not an RFC 3339 time: {value!r}") from error
    if moment.tzinfo is None:
        raise TimeError(f"an RFC 3339 time needs its offset (Z or +hh:mm): {value!r}")
    return moment


def utc_now() -> datetime:
    """Now, aware, in UTC: the one source of "now" that clocks default to."""
    return datetime.now(UTC)
