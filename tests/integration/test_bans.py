"""(d) Bans: issued after `after` strikes, escalate by `factor`, decay by `decay`."""

from __future__ import annotations

import time

import harness

CONFIG = {
    "version": 1,
    "rate_limits": {
        "rules": [
            {"name": "one", "key": ["ip"], "capacity": 1, "refill": {"tokens": 1, "every": "1h"}, "ban": True}
        ]
    },
    "bans": {"after": 2, "base": "2s", "factor": 2.0, "max": "8s", "decay": "3s"},
}


def _show(r):
    status, headers, body = r
    return f"{status} retry-after={headers.get('retry-after')} body={body[:160]!r}"


def strike_until_banned(e, strikes: int) -> tuple[float, list]:
    """Send ``strikes`` requests that must each be a violation, then one more
    that must be answered by the ban.  Returns (time the ban was issued, responses)."""
    seen = []
    for i in range(strikes):
        r = e.request("GET", "/x")
        seen.append(r)
        last = i == strikes - 1
        # The request whose strike triggers the ban may already say 403 ban.active.
        ok = {("rl.exhausted", 429)} | ({("ban.active", 403)} if last else set())
        assert (harness.reason_of(r), r[0]) in ok, f"strike {i + 1}: {_show(r)}; so far {[_show(x) for x in seen]}"
    issued = time.monotonic()
    r = e.request("GET", "/x")
    seen.append(r)
    assert r[0] == 403 and harness.reason_of(r) == "ban.active", f"expected ban: {[_show(x) for x in seen]}"
    return issued, seen


def retry_after(r) -> int:
    ra = r[1].get("retry-after")
    assert ra is not None and ra.isdigit(), f"403 without integer Retry-After: {_show(r)}"
    return int(ra)


def wait_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def test_ban_escalates_and_decays(envoy):
    e = envoy(CONFIG)
    assert e.request("GET", "/x")[0] == 200

    # Level 1: base = 2s.
    issued1, seen = strike_until_banned(e, 2)
    ra1 = retry_after(seen[-1])
    assert 1 <= ra1 <= 2, f"level-1 ban Retry-After {ra1}: {[_show(x) for x in seen]}"

    # Ban over (2s) -> 2 more strikes (bucket is still empty) -> level 2: 4s.
    wait_until(issued1 + 2.3)
    issued2, seen = strike_until_banned(e, 2)
    ra2 = retry_after(seen[-1])
    assert 3 <= ra2 <= 4, f"level-2 ban Retry-After {ra2}: {[_show(x) for x in seen]}"

    # Ban ends after 4s; then two decay periods (2 x 3s) without violations bring
    # the level from 2 back to 0, so the next ban is level 1 again.
    wait_until(issued2 + 4.0 + 6.5)
    issued3, seen = strike_until_banned(e, 2)
    ra3 = retry_after(seen[-1])
    assert 1 <= ra3 <= 2, f"after decay, expected a level-1 ban; Retry-After {ra3}: {[_show(x) for x in seen]}"
