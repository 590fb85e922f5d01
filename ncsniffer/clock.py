"""One clock per driver: the ``now`` every decision of a turn agrees on, and the
once-a-second work (purge, DNS, next connection expiry), scheduled in one place.

Two kinds, and which one runs says what time means:

- :class:`PacketClock` (a replay): ``now`` is the packets' own time.  It starts
  at the first packet's second and moves as the accounting reaches each new
  second, and the per-second jobs run then, with the seconds that passed, so a
  replay's purge and DNS see the state of their second.
- :class:`WallClock` (the live daemon): ``now`` is wall time, read once per
  loop turn (darkstat's ``now_update()``); the jobs run once a second of
  monotonic time.  The accounting still counts each packet at its own
  timestamp, but packets never move this clock.
"""

from __future__ import annotations

import time
from typing import Callable

TICK = 1.0          # seconds between the wall clock's per-second jobs

Job = Callable[[int, int], object]      # job(now, seconds elapsed since the last run)


class Clock:
    """``now`` (integer epoch seconds) and the jobs run once a second."""

    packet_time = False      # True: ``now`` follows the packets (a replay)

    def __init__(self, now: int):
        self.now = now
        self.jobs: list[Job] = []

    def every_second(self, job: Job) -> None:
        """Run ``job(now, elapsed)`` once per second of this clock, after those before it."""
        self.jobs.append(job)

    def packets(self, second: int) -> None:
        """The accounting reaches packets of ``second`` (only packet time moves)."""

    def _run(self, now: int, elapsed: int) -> None:
        for job in self.jobs:
            job(now, elapsed)


class PacketClock(Clock):
    """A replay's clock: the packets' time; ``at_start`` jobs run at the first packet."""

    packet_time = True

    def __init__(self, now: int = 0):
        super().__init__(now)
        self.starts: list[Callable[[int], object]] = []
        self._second: int | None = None   # the second of the packets being counted

    def at_start(self, job: Callable[[int], object]) -> None:
        """Run ``job(second)`` at the first packet: a replay starts at its time."""
        self.starts.append(job)

    def packets(self, second: int) -> None:
        """Move to ``second``; a second later than any before runs the jobs (time
        going back in a file moves nothing)."""
        if second == self._second:
            return
        previous, self._second = self._second, second
        if previous is None:
            for job in self.starts:
                job(second)
            self.now = second
        elif second > self.now:
            elapsed, self.now = second - self.now, second
            self._run(second, elapsed)


class WallClock(Clock):
    """The daemon's clock: wall time read once per loop turn (``update``); the jobs
    run by ``tick_if_due`` once per TICK of monotonic time, each with elapsed 1."""

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, interval: float = TICK):
        super().__init__(int(wall()))
        self._wall = wall
        self._monotonic = monotonic
        self.interval = interval
        self.next_tick = monotonic() + interval

    def update(self) -> int:
        """Read the wall clock: the ``now`` of this loop turn."""
        self.now = int(self._wall())
        return self.now

    def tick_if_due(self) -> None:
        """Run the per-second jobs if their time has come (on this turn's ``now``)."""
        if self._monotonic() >= self.next_tick:
            self.next_tick = self._monotonic() + self.interval
            self._run(self.now, 1)
