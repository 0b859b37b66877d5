"""What the sink does when the store fails a batch (pure: no store, no Kafka).

Two failures look alike from the sink but call for opposite answers:
- the store cannot take anything (unreachable, a table missing, out of disk or memory): the batch is retried, its
  offsets uncommitted, and after `failures_unready` failed attempts in a row the sink says so (readiness false, a
  ServiceStatus on vigil.monitoring) until a write succeeds again;
- the store is up but refuses what some messages hold (a constraint, a value it cannot parse or convert): retrying
  would fail forever. The batch is split in halves, and the halves again (bisect), until each refused message is
  alone; those go to the dead-letter topic with the engine's reason, every other message is stored. Storing a half
  twice is harmless: the sink stores each event id once."""
from __future__ import annotations

import re
import threading
import time
from typing import Callable, Sequence, TypeVar

# The engine's errors for values it will not store: the message's fault, not the store's. Any other error (a
# connection refused, a missing table, TOO_MANY_PARTS, MEMORY_LIMIT_EXCEEDED, NOT_ENOUGH_SPACE...) is the store's.
REJECTION_CODES = {
    6: "CANNOT_PARSE_TEXT", 25: "CANNOT_PARSE_ESCAPE_SEQUENCE", 26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED", 38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH", 69: "ARGUMENT_OUT_OF_BOUND", 70: "CANNOT_CONVERT_TYPE", 72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA", 128: "TOO_LARGE_ARRAY_SIZE", 131: "TOO_LARGE_STRING_SIZE",
    190: "SIZES_OF_ARRAYS_DONT_MATCH", 321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", 376: "CANNOT_PARSE_UUID", 407: "DECIMAL_OVERFLOW",
    469: "VIOLATED_CONSTRAINT",
}
_CODE = re.compile(r"Code: (\d+)\.")


def is_rejection(exc: BaseException) -> bool:
    """Whether the store refused the rows for what they hold (rather than failing to take any)."""
    code = _CODE.search(str(exc))
    if code is not None:
        return int(code.group(1)) in REJECTION_CODES
    # Raised by the client while it serializes a value (before the store sees it): the value's fault.
    return type(exc).__name__ == "DataError" or isinstance(exc, (TypeError, OverflowError))


def rejection_reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:2000] if str(exc).strip() else type(exc).__name__


Result = TypeVar("Result")


def isolate_rejections(count: int, store: Callable[[int, int], Sequence[Result]], first_error: BaseException,
                       rejects: Callable[[BaseException], bool] = is_rejection) -> list[Result | BaseException]:
    """The batch of `count` messages failed with `first_error`, a rejection: stores it in halves, then halves of
    the failing halves, down to single messages. `store(lo, hi)` stores messages lo..hi-1 and returns one result
    each, or raises. Returns each message's result, or the error that refused it alone. An error that is not a
    rejection (the store went away meanwhile) propagates: the caller retries the whole batch."""
    results: list[Result | BaseException | None] = [None] * count

    def attempt(lo: int, hi: int, error: BaseException | None) -> None:
        if error is None:
            try:
                results[lo:hi] = store(lo, hi)
                return
            except Exception as exc:
                if not rejects(exc):
                    raise
                error = exc
        if hi - lo == 1:
            results[lo] = error
            return
        middle = (lo + hi) // 2
        attempt(lo, middle, None)
        attempt(middle, hi, None)

    if count:
        attempt(0, count, first_error)
    return results  # type: ignore[return-value]


class StoreHealth:
    """Counts failed attempts at storing a batch in a row. At `failures_unready` the store is declared unavailable
    (readiness false, `on_change(False, reason, failures)`); the next success declares it available again
    (`on_change(True, ...)`). `check` is a readiness check for libs.common.ops.Health."""

    def __init__(self, failures_unready: int = 5,
                 on_change: Callable[[bool, str, int], None] | None = None) -> None:
        if failures_unready < 1:
            raise ValueError("failures_unready must be at least 1")
        self.failures_unready = failures_unready
        self.on_change = on_change
        self.failures = 0
        self.available = True
        self.last_error = ""
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def failed(self, error: BaseException | str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = rejection_reason(error) if isinstance(error, BaseException) else error
            change = self.available and self.failures >= self.failures_unready
            if change:
                self.available, self._since = False, time.monotonic()
            failures, reason = self.failures, self.last_error
        if change and self.on_change is not None:
            self.on_change(False, reason, failures)

    def succeeded(self) -> None:
        with self._lock:
            change = not self.available
            failures, self.failures = self.failures, 0
            if change:
                self.available, self._since = True, time.monotonic()
        if change and self.on_change is not None:
            self.on_change(True, f"a batch was stored after {failures} failed attempts", 0)

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if self.available:
                return True, "store writable" + (f" ({self.failures} failed attempts in a row)" if self.failures
                                                 else "")
            return False, (f"store unavailable for {time.monotonic() - self._since:.0f}s, {self.failures} failed "
                           f"attempts in a row: {self.last_error[:300]}")
