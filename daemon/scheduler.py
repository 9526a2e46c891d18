"""The request registry, the bounded queue, batch picking and cancellation. Pure logic, no sockets.

Two threads use it: the socket thread (submit, cancel, status) and the engine worker (next_batch, finish).
One lock guards everything, and every state change happens under it, which makes the races simple:
- a cancel that finds its target queued removes it, and the caller answers `cancelled` at once;
- a cancel that finds it running sets `cancel_requested`; the worker drops it from the batch at the next
  step and answers `cancelled`;
- `finish` is the single point where the worker ends a ticket: it says whether a cancel got there first,
  so a ticket ends with exactly one of `done`/`error` or `cancelled`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from protocol import ErrorCode, ProtocolError

RECENT_TIMINGS = 32


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Ticket:
    """One accepted request (generate, inpaint, continue, load or unload) of one client."""

    client: bytes
    rid: str
    kind: str  # the request's wire type (queue_entry.type): generate, inpaint, continue, load, unload
    model: str
    rows: int = 1
    payload: Any = None  # daemon.worker.Work: a plan of daemon.render, LoadModel or UnloadModel (picks the handler)
    key: Hashable | None = None  # batch key once prepared; None: not batchable (or not prepared yet)
    prepared: bool = True
    preparing: bool = False  # handed to a worker by `unprepared`
    state: State = State.QUEUED
    cancel_requested: bool = False
    cancelled_by: str | None = None
    accepted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    batch_size: int = 1


class Scheduler:
    def __init__(self, max_queue: int = 32, max_batch: int = 16, clock: Callable[[], float] = time.monotonic):
        self.max_queue, self.max_batch, self.clock = max_queue, max_batch, clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[Ticket] = []
        self._running: list[Ticket] = []
        self._active: dict[tuple[bytes, str], Ticket] = {}
        self._last_seen: dict[bytes, float] = {}
        self._recent: deque[dict[str, float]] = deque(maxlen=RECENT_TIMINGS)
        self.closed = False
        self.last_step_at: float | None = None  # wall clock (time.time), for status_reply

    # ---- socket thread --------------------------------------------------------------------------------
    def check_new(self, client: bytes, rid: str) -> None:
        """Refuse a request id the client still has in flight (duplicate_id: nil id, details.id)."""
        with self._lock:
            if (client, rid) in self._active:
                raise ProtocolError(ErrorCode.DUPLICATE_ID, f"request id {rid!r} is still in use by this client",
                                    details={"id": rid})

    def submit(self, t: Ticket) -> int:
        """Queue a ticket; returns its queue position. Raises ProtocolError busy / duplicate_id / shutting_down."""
        with self._lock:
            if self.closed:
                raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down", request_id=t.rid)
            if (t.client, t.rid) in self._active:
                raise ProtocolError(ErrorCode.DUPLICATE_ID, f"request id {t.rid!r} is still in use by this client",
                                    details={"id": t.rid})
            if len(self._queue) >= self.max_queue:
                raise ProtocolError(ErrorCode.BUSY, f"the queue is full ({len(self._queue)} requests)",
                                    request_id=t.rid, details={"queue": len(self._queue), "max_queue": self.max_queue})
            t.state, t.accepted_at = State.QUEUED, self.clock()
            self._queue.append(t)
            self._active[(t.client, t.rid)] = t
            self._wake.notify_all()
            return len(self._queue) - 1

    def cancel(self, client: bytes, rid: str, by: str | None = None) -> tuple[State | None, Ticket | None]:
        """Cancel one request of `client`. Returns (state it was in, ticket); (None, None) if not found.
        A queued ticket is removed and finished here: the caller answers `cancelled`."""
        with self._lock:
            t = self._active.get((client, rid))
            if t is None:
                return None, None
            return self._cancel_locked(t, by), t

    def cancel_client(self, client: bytes) -> list[Ticket]:
        """Cancel every request of a client that is gone; returns the queued ones (finished here)."""
        with self._lock:
            mine = [t for t in self._active.values() if t.client == client]
            return [t for t in mine if self._cancel_locked(t, None) == State.QUEUED]

    def cancel_running(self, which: Callable[[Ticket], bool] | None = None) -> list[Ticket]:
        """Flag every running ticket (second SIGINT), or those `which` picks (endless requests at shutdown);
        the worker ends them with `cancelled`."""
        with self._lock:
            picked = [t for t in self._running if which is None or which(t)]
            for t in picked:
                t.cancel_requested = True
            return picked

    def find(self, client: bytes, rid: str) -> Ticket | None:
        """The queued or running ticket `rid` of `client`, or None."""
        with self._lock:
            return self._active.get((client, rid))

    def _cancel_locked(self, t: Ticket, by: str | None) -> State:
        was = t.state
        if was == State.QUEUED:
            self._queue.remove(t)
            self._end_locked(t)
        elif not t.cancel_requested:
            t.cancel_requested, t.cancelled_by = True, by
        return was

    def close(self) -> list[Ticket]:
        """Stop accepting; return the queued tickets, removed and finished (the caller answers them).
        The worker finishes the running batch, then `next_batch` returns None."""
        with self._lock:
            self.closed = True
            drained, self._queue = self._queue, []
            for t in drained:
                self._end_locked(t)
            self._wake.notify_all()
            return drained

    def abandon_running(self) -> list[Ticket]:
        """The worker died: end its running tickets here (the caller answers them with `internal`)."""
        with self._lock:
            running = list(self._running)
            for t in running:
                self._end_locked(t)
            return running

    # ---- worker thread ----------------------------------------------------------------------------------
    def unprepared(self) -> list[Ticket]:
        """Queued tickets that need preparing, each handed to one caller only (with `--replicas` several
        workers ask): the caller prepares it (`set_prepared`) or ends it."""
        with self._lock:
            out = [t for t in self._queue if not t.prepared and not t.preparing]
            for t in out:
                t.preparing = True
            return out

    def set_prepared(self, t: Ticket, key: Hashable | None) -> None:
        with self._lock:
            t.key, t.prepared = key, True
            self._wake.notify_all()

    def requeue(self, t: Ticket, key: Hashable | None) -> bool:
        """A running ticket with more work (the next window of an inpaint or continue) goes to the back of the
        queue, prepared with `key`, so other requests run between its windows and same-key windows batch.
        False when it has ended or a cancel reached it (the caller ends it). Not bounded by `max_queue`."""
        with self._lock:
            if t.state != State.RUNNING or t.cancel_requested:
                return False
            self._running.remove(t)
            t.state, t.key, t.prepared = State.QUEUED, key, True
            self._queue.append(t)
            self._wake.notify_all()
            return True

    def next_batch(self, timeout: float = 0.5) -> list[Ticket] | None:
        """Tickets to run together: the oldest prepared ticket plus later queued ones with the same key, up
        to `max_batch` rows. [] on timeout or when the oldest ticket needs preparing; None once closed with an
        empty queue (the worker, the only caller, has finished its batch by then)."""
        deadline = self.clock() + timeout
        with self._lock:
            while not self._queue or (not self._queue[0].prepared and self._queue[0].preparing):
                if self.closed and not self._queue:
                    return None
                left = deadline - self.clock()
                if left <= 0:  # (the head is being prepared by another worker: it waits, not spins)
                    return []
                self._wake.wait(left)
            head = self._queue[0]
            if not head.prepared:
                return []
            batch, rows = [head], head.rows
            if head.key is not None:
                for t in self._queue[1:]:
                    if t.prepared and t.key == head.key and rows + t.rows <= self.max_batch:
                        batch.append(t)
                        rows += t.rows
            now = self.clock()
            for t in batch:
                self._queue.remove(t)
                t.state, t.started_at, t.batch_size = State.RUNNING, now, len(batch)
            self._running.extend(batch)
            return batch

    def finish(self, t: Ticket) -> str:
        """End a ticket; the one place a ticket ends on the worker side. Returns what its terminal message
        must be: "ok" (done, or the error at hand), "cancelled" (a cancel reached it first), or "gone" (it
        had already ended, e.g. cancelled while queued: send nothing more)."""
        with self._lock:
            if t.state == State.FINISHED:
                return "gone"
            if t in self._queue:
                self._queue.remove(t)
            self._end_locked(t)
            return "cancelled" if t.cancel_requested else "ok"

    def _end_locked(self, t: Ticket) -> None:
        t.state, t.finished_at = State.FINISHED, self.clock()
        if t in self._running:
            self._running.remove(t)
        if self._active.get((t.client, t.rid)) is t:
            del self._active[(t.client, t.rid)]

    def note_step(self) -> None:
        self.last_step_at = time.time()

    def record_timings(self, timings: dict[str, float]) -> None:
        with self._lock:
            self._recent.append(dict(timings))

    # ---- heartbeats -------------------------------------------------------------------------------------
    def touch(self, client: bytes) -> None:
        self._last_seen[client] = self.clock()

    def stale_clients(self, timeout_s: float) -> list[bytes]:
        """Clients with a running request that have sent nothing for `timeout_s` seconds."""
        now = self.clock()
        with self._lock:
            running = {t.client for t in self._running if not t.cancel_requested}
        return [c for c in running if now - self._last_seen.get(c, now) > timeout_s]

    def forget_idle_clients(self, older_than_s: float) -> list[bytes]:
        """Drop the heartbeat record of clients with nothing in flight and silent that long; returns them."""
        now = self.clock()
        with self._lock:
            busy = {c for c, _ in self._active}
        old = [c for c, seen in self._last_seen.items() if c not in busy and now - seen > older_than_s]
        for c in old:
            del self._last_seen[c]
        return old

    # ---- status -----------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[list[tuple[Ticket, int]], int]:
        """[(ticket, position)] running first (position 0), then queued in order; and the running count."""
        with self._lock:
            out = [(t, 0) for t in self._running] + [(t, i) for i, t in enumerate(self._queue)]
            return out, len(self._running)

    def busy_models(self) -> set[str]:
        with self._lock:
            return {t.model for t in self._active.values()}

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def recent_timings(self) -> dict[str, float]:
        with self._lock:
            recent = list(self._recent)
        keys = {k for r in recent for k in r}
        return {k: float(statistics.median(r[k] for r in recent if k in r)) for k in sorted(keys)}

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._running
