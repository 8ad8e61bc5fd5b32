"""Drains the outbox into the MQTT connection, in order, with a bounded in-flight window.

The outbox is the only source of truth: on every new connection the window is forgotten and
sending restarts from the oldest message not yet acknowledged, so whatever was in flight when a
connection died is sent again (a duplicate at worst, never a loss).

Thread model: the window is touched only under ``_window_lock``, by the sender thread (``run``)
or by a thread that has just stored a message (``wake``). The sender decides which: a message that
arrives after a quiet spell (``INLINE_GAP_S``, as from a camera or a paced file) is published on
the storing thread when the window is idle and the connection settled, which spares a thread
hand-off on its way to the broker (0.18 ms at the p50 here); messages that come close together
(a file read as fast as possible) are left to the sender thread, which batches them and costs the
storing thread nothing. Once ``BURST_RUN`` messages in a row came that close (a sustained
burst, not two live pipelines that happen to coincide), the sender is not woken for each message
or each acknowledgement: it looks at the outbox every ``BURST_POLL_S`` and publishes what came
meanwhile in one go, so a result costs no thread wake-up of its own (two per result otherwise,
a third of the storing thread's Python time on a 720p clip). An acknowledgement that frees a
full window still wakes it. A message sent around the outbox calls :meth:`OutboxSender.flush`
first, which publishes what the window has room for, so it does not overtake the results
stored before it.

The MQTT thread reports through ``connection_up``, ``connection_down`` and ``acked_mid``, which
only note it under ``_cond`` and wake the sender; it never waits for the window lock, so holding
that lock while calling into paho cannot deadlock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from edge_runtime.publish.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)

ACK_BATCH = 64
ACK_DELAY_S = 0.1
IDLE_POLL_S = 1.0
FAILURE_PAUSE_S = 1.0
INLINE_GAP_S = 0.01   # a message this long after the previous one is published on its own thread
BURST_POLL_S = 0.01   # during a burst the sender looks at the outbox this often, unwoken
BURST_RUN = 3         # close messages in a row that make a burst

PublishItem = Callable[[OutboxItem], int | None]


class OutboxSender:
    """Keeps up to ``max_inflight`` outbox messages published and not yet acknowledged."""

    def __init__(self, outbox: Outbox, publish: PublishItem, max_inflight: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._outbox = outbox
        self._clock = clock
        self._last_wake = -INLINE_GAP_S
        self._close_run = 0                 # messages in a row less than INLINE_GAP_S apart
        self._last_burst = -INLINE_GAP_S    # when the last of a run of BURST_RUN came
        self._publish = publish
        self._max_inflight = max_inflight
        self._cond = threading.Condition()
        self._window_lock = threading.Lock()
        self._signalled = False
        self._stopping = False
        self._draining = False
        self._up = False
        self._generation = 0
        self._acks: deque[tuple[int, int, bool]] = deque()
        # A burst: the sender polls, and neither wake() nor acked_mid() needs to signal it.
        # ``_arrived`` is set by wake() before it reads ``_polling``, and cleared by the sender
        # before it looks at the outbox; the sender clears ``_polling`` before it reads
        # ``_arrived``: a message stored as a burst ends is never left unseen.
        self._polling = False
        self._arrived = False
        self.rounds = 0
        # The window, under _window_lock:
        self._window_generation = 0
        self._inflight: dict[int, int] = {}
        self._cursor = 0
        self._pending_acks: list[int] = []
        self._pending_since = 0.0
        self._refill_at = max(1, max_inflight // 4)
        self._last_failure: str | None = None
        self.published = 0
        self.acked = 0
        self.rejected = 0

    # Notes from other threads --------------------------------------------------------------

    def connection_up(self) -> None:
        with self._cond:
            self._generation += 1
            self._up = True
            self._signal()

    def connection_down(self) -> None:
        with self._cond:
            self._up = False
            self._signal()

    def acked_mid(self, mid: int, refused: bool = False) -> None:
        """The broker acknowledged message ``mid`` (``refused``: an MQTT 5 failure code)."""
        with self._cond:
            self._acks.append((self._generation, mid, refused))
            if not self._polling or self._draining or self.inflight >= self._max_inflight:
                self._signal()

    def wake(self) -> None:
        """New messages are in the outbox. After a quiet spell they are published on the calling
        thread when the window is idle (a thread hand-off less on their way to the broker);
        otherwise the sender thread is woken for them."""
        now = self._clock()
        quiet = now - self._last_wake >= INLINE_GAP_S
        self._last_wake = now
        self._close_run = 0 if quiet else self._close_run + 1
        if self._close_run >= BURST_RUN:
            self._last_burst = now
        self._arrived = True
        if quiet and self._publish_now():
            return
        if self._polling:
            return   # the sender looks again within BURST_POLL_S
        with self._cond:
            self._signal()

    def _publish_now(self) -> bool:
        if not self._window_lock.acquire(blocking=False):
            return False  # the sender thread is at work: it picks the new messages up
        try:
            with self._cond:
                ready = (self._up and not self._stopping and not self._acks
                         and self._generation == self._window_generation)
            if ready:
                self._fill_window()
            return ready
        except Exception:
            log.debug("publishing on the storing thread failed; left to the sender", exc_info=True)
            return False
        finally:
            self._window_lock.release()

    def flush(self) -> None:
        """Publish, on the calling thread, what the outbox holds and the window has room for:
        a message sent around the outbox (health, a reply, metrics) then follows the results
        stored before it, even while a burst leaves them for the sender's next look. Best
        effort: with the window full, or before a new connection settled, they come later."""
        with self._window_lock:
            with self._cond:
                ready = (self._up and not self._stopping
                         and self._generation == self._window_generation)
            if ready:
                self._fill_window(batch=False)

    def drain(self) -> None:
        """From now on, write acks to the outbox at once instead of in batches."""
        with self._cond:
            self._draining = True
            self._signal()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._signal()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def polling(self) -> bool:
        """A burst is on: the sender looks at the outbox every BURST_POLL_S, unwoken."""
        return self._polling

    # The sender thread ---------------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._cond:
                if not self._signalled and not self._stopping:
                    self._cond.wait(self._wait_timeout())
                self._signalled = False
                stopping, up, generation = self._stopping, self._up, self._generation
            self._arrived = False
            self.rounds += 1
            try:
                with self._window_lock:
                    self._step(stopping, up, generation)
                self._poll_while_bursting(up)
            except Exception as exc:
                # The outbox stays the truth: log, pause, and try again rather than stop sending.
                self._note_failure(exc)
                if stopping:
                    return
                with self._cond:
                    self._cond.wait(FAILURE_PAUSE_S)
                continue
            self._last_failure = None
            if stopping:
                return

    def _step(self, stopping: bool, up: bool, generation: int) -> None:
        self._settle(generation)
        if stopping:
            self._flush_acks()
            return
        if up:
            self._fill_window()
        if self._ack_flush_due() or not self._inflight:
            self._flush_acks()

    def _poll_while_bursting(self, up: bool) -> None:
        """Poll while messages come close together; leave polling once a round found the burst
        over and nothing new arrived since it looked."""
        if up and self._clock() - self._last_burst < INLINE_GAP_S:
            self._polling = True
            return
        self._polling = False
        if self._arrived:
            self._polling = True

    def _note_failure(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_failure:
            log.error("outbox sender failed (%s); retrying", text)
        self._last_failure = text

    def _signal(self) -> None:
        self._signalled = True
        self._cond.notify()

    def _wait_timeout(self) -> float | None:
        if self._polling:
            return BURST_POLL_S
        if self._acks:
            return 0.0   # noted while the sender polled, not signalled: settle them now
        if self._pending_acks:
            return max(0.0, self._pending_since + ACK_DELAY_S - time.monotonic())
        # While connected, an occasional look catches appends nobody woke us for.
        return IDLE_POLL_S if self._up else None

    def _ack_flush_due(self) -> bool:
        if not self._pending_acks:
            return False
        if self._draining or len(self._pending_acks) >= ACK_BATCH:
            return True
        return time.monotonic() - self._pending_since >= ACK_DELAY_S

    def _settle(self, generation: int) -> None:
        """Match acknowledgements to the window, then restart the window on a new connection."""
        while self._acks:
            ack_generation, mid, refused = self._acks.popleft()
            if ack_generation != self._window_generation:
                continue
            outbox_id = self._inflight.pop(mid, None)
            if outbox_id is not None:
                self._note_ack(outbox_id, refused)
        if generation != self._window_generation:
            self._flush_acks()
            self._inflight.clear()
            self._cursor = 0
            self._window_generation = generation

    def _note_ack(self, outbox_id: int, refused: bool) -> None:
        if refused:
            self.rejected += 1
            log.warning("broker refused outbox message %d; it is dropped", outbox_id)
        if not self._pending_acks:
            self._pending_since = time.monotonic()
        self._pending_acks.append(outbox_id)

    def _fill_window(self, batch: bool = True) -> None:
        room = self._max_inflight - len(self._inflight)
        # Refill in batches under load (one query per batch, not per ack); at once when idle.
        if room <= 0 or (batch and self._inflight and room < self._refill_at):
            return
        for item in self._outbox.peek(room, after_id=self._cursor):
            try:
                mid = self._publish(item)
            except ValueError as exc:
                # A message paho cannot send would block the queue forever: drop it, loudly.
                log.error("outbox message %d (%s) cannot be sent: %s", item.id, item.topic, exc)
                self.rejected += 1
                self._note_ack(item.id, refused=False)
                self._cursor = item.id
                continue
            if mid is None:
                return
            self._inflight[mid] = item.id
            self._cursor = item.id
            self.published += 1

    def _flush_acks(self) -> None:
        if not self._pending_acks:
            return
        ids, self._pending_acks = self._pending_acks, []
        try:
            self._outbox.ack(ids)
        except Exception:
            # The rows stay on disk and are sent again later: a duplicate, not a loss.
            log.exception("could not record %d acknowledgements in the outbox", len(ids))
            return
        self.acked += len(ids)
