"""Generations on worker threads: the pipeline's blocking event iterators, handed to the event loop.

A request's generations (one per chat choice) each run on a thread of their own and put their
events into one asyncio queue; the request handler reads them as they come. `cancel` (a client
that went away) closes each iterator before its next step, which cancels its rows."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from ..generation.events import Done, Event, ImageProgress
from .metrics import ServerMetrics

_END = object()  # a generation's last queue item, after its events or its error


class Run:
    """One request's generations, each started on a worker thread; their events come out of
    `events()` as (generation index, event) in the order they were produced."""

    def __init__(self, starts: Sequence[Callable[[], Iterator[Event]]], rows: int, metrics: ServerMetrics):
        """`starts` each return a generation's event iterator (the pipeline's `stream`); `rows` is
        how many batch rows each one takes, for the metrics."""
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._peeked: collections.deque = collections.deque()
        self._open = len(starts)
        self._cancelled = threading.Event()
        self._streams: list[Iterator[Event]] = []  # the generations' event iterators, once started
        self._rows = rows
        self._metrics = metrics
        for index, start in enumerate(starts):
            threading.Thread(
                target=self._work, args=(index, start), name=f"janus-like-generation-{index}", daemon=True
            ).start()

    async def first(self) -> None:
        """Wait until a generation produces its first event; its error (bad input found while
        preparing or starting it) is raised here, before any response has begun."""
        item = await self._queue.get()
        self._peeked.append(item)
        if isinstance(item[1], BaseException):
            raise item[1]

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Every generation's events (ImageProgress left out) until all have ended; the first error is raised."""
        while self._open:
            index, item = self._peeked.popleft() if self._peeked else await self._queue.get()
            if item is _END:
                self._open -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item

    def cancel(self) -> None:
        """Stop every generation before its next step (safe to call more than once, or after the end).
        Each iterator is closed here too, so that one still waiting for a batch slot (whose thread
        waits for its first event) leaves the queue at once."""
        self._cancelled.set()
        for events in list(self._streams):
            with contextlib.suppress(ValueError):  # a generator in mid-step: its thread closes it after the step
                events.close()

    # ------------------------------------------------------------------ worker threads

    def _work(self, index: int, start: Callable[[], Iterator[Event]]) -> None:
        try:
            self._pump(index, start)
        except Exception as error:  # handed to the request handler, which answers with it
            self._put(index, error)
        finally:
            self._put(index, _END)

    def _pump(self, index: int, start: Callable[[], Iterator[Event]]) -> None:
        """Start the generation and forward its events until the end or a cancel, keeping the
        waiting / active gauges: waiting until its first event, active until it ends."""
        self._metrics.add(waiting=1)
        producing = finished = False
        try:
            events = start()
            self._streams.append(events)
            try:
                while not self._cancelled.is_set() and not finished:
                    event = next(events, None)
                    if event is None:
                        break
                    if not producing:
                        producing = True
                        self._metrics.add(waiting=-1, active_rows=self._rows)
                    if isinstance(event, Done):
                        finished = True
                        self._metrics.generated(
                            sum(len(r.token_ids) for r in event.results), sum(len(r.images) for r in event.results)
                        )
                    if not isinstance(event, ImageProgress):
                        self._put(index, event)
            finally:
                events.close()  # cancels the generation's rows where it stopped early
        finally:
            self._metrics.add(
                **({"active_rows": -self._rows} if producing else {"waiting": -1}),
                cancelled=int(self._cancelled.is_set() and not finished),
            )

    def _put(self, index: int, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (index, item))
        except RuntimeError:  # the event loop has closed (server shutdown): nobody is reading
            pass
