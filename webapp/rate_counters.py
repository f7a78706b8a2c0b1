"""Fixed-window counters of the rate limits (webapp/rate_limits.py), in this process's memory or in Redis: one
storage call per request, which checks an address's refused-credentials guard and counts its budgets together.

A window starts at its counter's first unit and lasts the limit's period (as the `limits` library's fixed window).
Counters are counted in order and the first one over its limit stops the rest, so a refused request does not
spend the budgets after it. Redis runs the whole step as one Lua script (one EVALSHA); when Redis does not answer,
each process counts in its own memory (fail open) and tries Redis again after 1, 2, 4 … 32 s.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
import redis.backoff
import redis.retry

log = logging.getLogger("webapp.rate_limits")

# A Redis that hangs costs a request this much at most before the process counts in memory instead.
STORAGE_TIMEOUT_SECONDS = 0.5
MAX_RETRY_SECONDS = 32
DEGRADED_LOG_INTERVAL_SECONDS = 60
SWEEP_INTERVAL_SECONDS = 1.0  # expired counters leave memory at most this late


@dataclass(frozen=True)
class Counter:
    """One limit of one requester: its storage key, how many units a window allows, and the window."""

    key: str
    amount: int
    seconds: int
    label: object  # handed back in the Count (the limit and its scope), never stored


@dataclass(frozen=True)
class Count:
    counter: Counter
    used: int
    reset_in: float  # seconds until the window ends

    @property
    def remaining(self) -> int:
        return max(0, self.counter.amount - self.used)

    @property
    def reset_seconds(self) -> int:
        return max(0, math.ceil(self.reset_in))


@dataclass(frozen=True)
class Answer:
    """blocked: the guard's count that refuses the request (nothing else counted); counts: the counters counted,
    in order, the last one over its limit when the request is refused."""

    blocked: Count | None
    counts: list[Count]

    @property
    def breached(self) -> Count | None:
        if self.blocked is not None:
            return self.blocked
        last = self.counts[-1] if self.counts else None
        return last if last is not None and last.used > last.counter.amount else None


class MemoryCounters:
    """This process's counters: each request's step is one dict operation under one lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._windows: dict[str, list] = {}  # key -> [used, ends at (time.time())]
        self._swept_at = 0.0

    def _used(self, key: str, now: float) -> list | None:
        window = self._windows.get(key)
        return window if window is not None and window[1] > now else None

    def _sweep(self, now: float) -> None:
        if now - self._swept_at >= SWEEP_INTERVAL_SECONDS:
            self._windows = {key: window for key, window in self._windows.items() if window[1] > now}
            self._swept_at = now

    def blocked(self, guards: list[Counter]) -> Count | None:
        now = time.time()
        with self._lock:
            return self._blocked(guards, now)

    def _blocked(self, guards: list[Counter], now: float) -> Count | None:
        for guard in guards:
            window = self._used(guard.key, now)
            if window is not None and window[0] >= guard.amount:
                return Count(guard, window[0], window[1] - now)
        return None

    def count(self, guards: list[Counter], counters: list[Counter]) -> Answer:
        now = time.time()
        with self._lock:
            self._sweep(now)
            blocked = self._blocked(guards, now)
            if blocked is not None:
                return Answer(blocked, [])
            counts = []
            for counter in counters:
                window = self._used(counter.key, now)
                if window is None:
                    window = self._windows[counter.key] = [0, now + counter.seconds]
                window[0] += 1
                counts.append(Count(counter, window[0], window[1] - now))
                if window[0] > counter.amount:
                    break
            return Answer(None, counts)

    def refused(self, guards: list[Counter]) -> Answer:
        """A refused credential counted on its address's guards."""
        return self.count([], guards)


# KEYS: the guard's counters (ARGV[1] of them), then the counters to count. ARGV: the guard count, each guard's
# limit, then each counter's limit and window in ms. Returns {1, guard index, used, ms left} when a guard is full
# (nothing counted), else {0, used, ms left, used, ms left, …} up to the first counter over its limit.
COUNT_SCRIPT = """
local guards = tonumber(ARGV[1])
for i = 1, guards do
  local used = tonumber(redis.call('get', KEYS[i]) or '0')
  if used >= tonumber(ARGV[1 + i]) then
    return {1, i, used, redis.call('pttl', KEYS[i])}
  end
end
local answer = {0}
for i = guards + 1, #KEYS do
  local at = 2 + guards + (i - guards - 1) * 2
  local used = redis.call('incr', KEYS[i])
  local left = redis.call('pttl', KEYS[i])
  if left < 0 then
    left = tonumber(ARGV[at + 1])
    redis.call('pexpire', KEYS[i], left)
  end
  answer[#answer + 1] = used
  answer[#answer + 1] = left
  if used > tonumber(ARGV[at]) then break end
end
return answer
"""


def storage_label(uri: str) -> str:
    """The storage URI without its credentials (a Redis password)."""
    parts = urlsplit(uri)
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or ""
    return f"{parts.scheme}://{host}{parts.path}"


class RedisCounters:
    """Counters shared by every process through Redis, one script call per request; this process's memory while
    Redis does not answer. blocked() asks no one: it knows the addresses Redis said were locked out (count() checks
    the guard again in Redis, so an address locked out by another process is refused there)."""

    def __init__(self, uri: str):
        self.label = storage_label(uri)
        # limits' spelling of a Unix socket URL is redis+unix://; redis-py's is unix://
        self._client = redis.Redis.from_url(
            uri.replace("redis+unix://", "unix://", 1), socket_connect_timeout=STORAGE_TIMEOUT_SECONDS,
            socket_timeout=STORAGE_TIMEOUT_SECONDS,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))  # the fallback is the retry
        self._script = self._client.register_script(COUNT_SCRIPT)
        self._fallback = MemoryCounters()
        self._locked: dict[str, tuple[int, float]] = {}  # full guard windows Redis reported: key -> (used, ends at)
        self._lock = threading.Lock()
        self._failures = 0
        self._retry_at = 0.0  # time.monotonic() from which Redis is tried again
        self._logged_at = 0.0

    @property
    def degraded(self) -> bool:
        return self._failures > 0

    def blocked(self, guards: list[Counter]) -> Count | None:
        if self.degraded:
            return self._fallback.blocked(guards)
        now = time.time()
        for guard in guards:
            used, ends_at = self._locked.get(guard.key, (0, now))
            if used >= guard.amount and ends_at > now:
                return Count(guard, used, ends_at - now)
        return None

    def count(self, guards: list[Counter], counters: list[Counter]) -> Answer:
        if self.degraded and time.monotonic() < self._retry_at:
            self._still_degraded()
            return self._fallback.count(guards, counters)
        keys = [counter.key for counter in (*guards, *counters)]
        arguments = [len(guards), *(guard.amount for guard in guards),
                     *(value for counter in counters for value in (counter.amount, counter.seconds * 1000))]
        try:
            reply = self._script(keys=keys, args=arguments)
        except redis.RedisError as error:
            self._failed(error)
            return self._fallback.count(guards, counters)
        self._answered()
        if reply[0] == 1:
            guard = guards[reply[1] - 1]
            blocked = Count(guard, reply[2], max(reply[3], 0) / 1000)
            self._remember_blocked(blocked)
            return Answer(blocked, [])
        return Answer(None, [Count(counter, used, max(left, 0) / 1000)
                             for counter, used, left in zip(counters, reply[1::2], reply[2::2])])

    def refused(self, guards: list[Counter]) -> Answer:
        """A refused credential counted on its address's guards; a full one is remembered for blocked()."""
        answer = self.count([], guards)
        if not self.degraded:
            for count in answer.counts:
                if count.used >= count.counter.amount:
                    self._remember_blocked(count)
        return answer

    def _remember_blocked(self, count: Count) -> None:
        now = time.time()
        with self._lock:
            self._locked = {key: entry for key, entry in self._locked.items() if entry[1] > now}
            self._locked[count.counter.key] = (count.used, now + count.reset_in)

    def _failed(self, error: Exception) -> None:
        with self._lock:
            self._failures += 1
            wait = min(MAX_RETRY_SECONDS, 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + wait
            first = self._failures == 1
        if first:
            self._logged_at = time.monotonic()
            log.warning("rate limit storage %s does not answer: each worker counts in its own memory until it does",
                        self.label)
            log.debug("rate limit storage error: %s", error)

    def _still_degraded(self) -> None:
        now = time.monotonic()
        if now - self._logged_at >= DEGRADED_LOG_INTERVAL_SECONDS:
            self._logged_at = now
            log.warning("rate limit storage %s does not answer: each worker counts in its own memory until it does",
                        self.label)

    def _answered(self) -> None:
        if not self.degraded:
            return
        with self._lock:
            recovered, self._failures = self._failures > 0, 0
        if recovered:
            self._fallback = MemoryCounters()  # counts from the outage no longer apply: Redis holds the truth
            log.warning("rate limit storage %s answers again: limits are shared again", self.label)


def for_uri(uri: str):
    return MemoryCounters() if uri.startswith("memory://") else RedisCounters(uri)
