"""One bounded queue and one thread that owns the model: it forms batches of requests for any deltas and
computes them, and runs delta changes (PUT/DELETE) between batches.

A batch starts from the oldest waiting request and takes the later ones that can share its forward: the
same kind and the same decoding settings (a beam search runs one beam size and one length limit per
batch); under `--scheduling one-delta` also the same delta. It is sent when it holds --max-batch requests,
when its padded source tokens would pass --max-tokens, or when its oldest request has waited --max-wait-ms.
Requests whose client is gone, or whose deadline has passed, are dropped when the batch is formed.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from unifairseq.serve.engine import InputError

log = logging.getLogger("unifairseq.serve")


class Refused(Exception):
    """Not queued: the queue is full (429) or the server drains (503); the client retries later."""

    def __init__(self, status: int, message: str, retry_after: int = 1):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class TimedOut(Exception):
    pass


@dataclass(eq=False)
class Job:
    kind: str  # "generate" | "classify"
    delta: Optional[str]
    tokens: torch.Tensor
    settings: tuple  # what a batch's requests must share (beam, max_len, lenpen, min_len) or (head,)
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: bool = False  # the client went away: do not compute

    def key(self, one_delta: bool) -> tuple:
        return (self.kind, self.settings, self.delta) if one_delta else (self.kind, self.settings)


class Scheduler:
    def __init__(self, engine, metrics, max_batch: int = 16, max_tokens: int = 4096, max_wait_ms: float = 5.0,
                 max_queue: int = 256, one_delta: bool = False):
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_tokens = max(1, max_batch), max(1, max_tokens)
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue, self.one_delta = max_queue, one_delta
        self.queue: "collections.deque[Job]" = collections.deque()
        self.controls: "collections.deque[tuple]" = collections.deque()
        self.cond = threading.Condition()
        self.draining = False
        self.busy = False
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name="unifairseq-scheduler", daemon=True)

    # ------------------------------------------------------------ any thread
    def start(self) -> "Scheduler":
        self.thread.start()
        return self

    def depth(self) -> int:
        return len(self.queue)

    def submit(self, job: Job) -> Job:
        with self.cond:
            if self.draining:
                self.metrics.rejected.inc("draining")
                raise Refused(503, "the server is shutting down; retry on another replica", retry_after=1)
            if len(self.queue) >= self.max_queue:
                self.metrics.rejected.inc("queue_full")
                raise Refused(429, f"the queue is full ({self.max_queue} requests waiting); retry shortly",
                              retry_after=1)
            self.queue.append(job)
            self.cond.notify_all()
        return job

    def call(self, fn: Callable, *args) -> concurrent.futures.Future:
        """Run fn(*args) on the scheduler thread between two batches (adding or removing a delta)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            self.controls.append((fn, args, fut))
            self.cond.notify_all()
        return fut

    def drain(self) -> None:
        """Refuse new requests from now on; those accepted are still computed."""
        with self.cond:
            self.draining = True
            self.cond.notify_all()

    def idle(self) -> bool:
        with self.cond:
            return not self.queue and not self.controls and not self.busy

    def wait_idle(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.idle():
                return True
            time.sleep(0.01)
        return self.idle()

    def stop(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    # ------------------------------------------------------------ the scheduler thread
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.controls and not self._stop:
                    self.cond.wait()
                if self._stop:
                    return
                if self.controls:
                    fn, args, fut = self.controls.popleft()
                    batch = None
                else:
                    batch = self._form()
                self.busy = True
            try:
                if batch is None:
                    self._control(fn, args, fut)
                elif batch:
                    self._run(batch)
            except Exception:  # a bug: logged; the loop keeps serving
                log.exception("scheduler: unexpected error")
            finally:
                with self.cond:
                    self.busy = False

    @staticmethod
    def _control(fn, args, fut) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # handed to the caller, who answers it
            fut.set_exception(e)

    def _form(self) -> List[Job]:
        """Called holding the lock with a non-empty queue: waits up to the oldest request's max-wait for
        more requests, then takes the batch out of the queue."""
        first = self.queue[0]
        while (len(self.queue) < self.max_batch and not self.controls and not self._stop
               and (left := first.enqueued + self.max_wait - time.monotonic()) > 0):
            self.cond.wait(left)
        now = time.monotonic()
        key, batch, rest, width = None, [], collections.deque(), 0
        while self.queue:
            job = self.queue.popleft()
            if job.cancelled or job.future.done():
                self.metrics.dropped.inc("client_gone")
                continue
            if job.deadline < now:
                self.metrics.dropped.inc("timeout")
                _settle(job.future, error=TimedOut())
                continue
            k = job.key(self.one_delta)
            w = max(width, job.tokens.numel())
            if key is None or (k == key and len(batch) < self.max_batch and w * (len(batch) + 1) <= self.max_tokens):
                key, width = k, w
                batch.append(job)
            else:
                rest.append(job)
        self.queue.extendleft(reversed(rest))
        return batch

    def _run(self, batch: List[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in batch:
            if not self.engine.has(job.delta):
                _settle(job.future, error=InputError("delta", f"delta {job.delta!r} was removed while the request "
                                                    "waited", status=404))
            else:
                live.append(job)
                self.metrics.queue_wait.observe(now - job.enqueued)
        if not live:
            return
        kind = live[0].kind
        tokens, deltas = [j.tokens for j in live], [j.delta for j in live]
        start = time.perf_counter()
        try:
            if kind == "generate":
                beam, max_len, lenpen, min_len = live[0].settings
                out = self.engine.generate(tokens, deltas, beam, max_len, lenpen, min_len)
            else:
                logp = self.engine.classify(tokens, deltas, live[0].settings[0])
                out = [logp[i] for i in range(len(live))]
        except Exception as e:
            log.exception("scheduler: a %s batch of %d failed", kind, len(live))
            for job in live:
                _settle(job.future, error=e)
            return
        self.metrics.compute.observe(time.perf_counter() - start, kind)
        self.metrics.batches.inc(kind)
        self.metrics.batch_size.observe(len(live))
        self.metrics.batch_deltas.observe(len(set(deltas)))
        for job, result in zip(live, out):
            _settle(job.future, result)


def _settle(fut: concurrent.futures.Future, result=None, error: Optional[BaseException] = None) -> None:
    """Answer a request unless its handler already gave up on it (its future cancelled)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
