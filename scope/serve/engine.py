"""The generation worker: requests wait in a bounded queue; one thread runs them on the model, in batches.

1. A request handler checks its request (:mod:`scope.serve.state`) and submits a :class:`Job`;
   a full queue is refused at once (:class:`QueueFullError`, HTTP 429), never left to pile up.
2. One worker thread owns the model. It takes the next job, gathers the jobs that arrive right
   after it (see :meth:`Engine._next_batch`), and groups up to ``max_batch`` waiting jobs that
   share their sampling options
   (``max_tokens``, temperature, top_p, stop strings, steering positions); each row keeps its
   own prompt, seed and steering. Jobs with other options wait for the next round, in order.
3. The group runs as one :func:`scope.steering.steered_generation.generate_completions` call:
   the code path of :func:`scope.generate`, so each row's text is what ``scope.generate`` gives
   for that request alone. Per-row steering is installed for the call and always removed. With an
   ``assistant`` (a draft model, :mod:`scope.assisted`) every batch is assisted: greedy text is
   unchanged, steering applies to the target only, and each row's acceptance stats ride on its
   ``done`` event (and are logged per batch).
4. Each token, as it is sampled, becomes text through :class:`TextStream` (stop strings and
   split UTF-8 characters held back) and goes to its job's ``sink`` as an :class:`Event`; the
   HTTP side turns events into one response or server-sent events.
5. A job whose client went away (:attr:`Job.cancelled`) or whose deadline passed
   (``Limits.request_timeout_s``: a :class:`DeadlineError`, HTTP 504) leaves its batch at the next
   token, and never starts if it is still waiting; the other rows go on. An error in a batch of
   several jobs (steering one request made too strong) re-runs each job alone, so the error
   reaches only the request that caused it; the worker then serves the next jobs.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from scope.assisted import AssistedStats, check_assistant
from scope.inputs import decode
from scope.serve.state import GenerationArgs
from scope.steering.steered_generation import generate_completions

FinishReason = Literal["stop", "length"]

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """Too many requests are waiting (HTTP 429)."""


class DeadlineError(RuntimeError):
    """A request ran (or waited) past the server's time limit for one request (HTTP 504)."""


@dataclass(frozen=True)
class Event:
    """What a job reports: ``delta`` text, ``done`` (with the finish reason and token counts) or ``error``."""

    kind: Literal["delta", "done", "error"]
    text: str = ""
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None
    assisted: AssistedStats | None = None  # draft tokens proposed and accepted, with an assistant


@dataclass(eq=False)  # jobs are compared by identity
class Job:
    """One request's generation and where its events go (``sink`` must be thread-safe)."""

    args: GenerationArgs
    sink: Callable[[Event], None]
    timeout_s: float = math.inf  # from submission: waiting and generating together
    cancelled: threading.Event = field(default_factory=threading.Event)  # nobody listens any more
    started: float = field(default_factory=time.monotonic)

    def expired(self) -> bool:
        """Past its deadline: the client hears of it (once) and the job counts as cancelled."""
        if self.cancelled.is_set() or time.monotonic() - self.started <= self.timeout_s:
            return False
        self.cancelled.set()
        self.sink(Event("error", error=DeadlineError(
            f"The request ran past this server's limit of {self.timeout_s:g} s per request "
            "(scope serve --request-timeout); ask for fewer tokens, or retry when the server is less busy."
        )))  # fmt: skip
        return True

    def ended(self) -> bool:
        """Cancelled (its client went away) or past its deadline: its generation stops."""
        return self.cancelled.is_set() or self.expired()


class TextStream:
    """New tokens in, new text out: the decoded continuation grows token by token.

    Text is decoded from all tokens so far (as :func:`scope.generate` decodes them), so the
    pieces add up to the whole. Held back until safe: a trailing partial UTF-8 character
    (decoded as U+FFFD) and a tail that could be the start of a stop string. A stop string ends
    the text just before it.
    """

    def __init__(self, tokenizer: Any, stops: list[str], sent: str = ""):
        self.tokenizer = tokenizer
        self.stops = stops
        self.ids: list[int] = []
        self.sent = sent  # text already handed out (kept when a job is re-run alone)
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        text = decode(self.tokenizer, self.ids)
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            return self._emit(text[:cut])
        return self._emit(text[: len(text) - self._held(text)])

    def finish(self, text: str) -> str:
        """The rest of the final ``text`` (the whole continuation) once generation ends."""
        return self._emit(text)

    def _emit(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""  # a decode that rewrote earlier text waits for the end
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def _stop_at(self, text: str) -> int | None:
        found = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        return min(found) if found else None

    def _held(self, text: str) -> int:
        held = 1 if text.endswith("\ufffd") else 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    held = max(held, n)
                    break
        return held


class Engine:
    """A bounded queue of jobs and the one worker thread that runs them on ``model``, in batches."""

    def __init__(
        self,
        model: Any,
        *,
        max_queue: int,
        max_batch: int = 8,
        batch_window_s: float = 0.1,
        batch_gap_s: float = 0.02,
        assistant: Any = None,
    ):
        if assistant is not None:
            check_assistant(model, assistant)
        self.model = model
        self.assistant = assistant  # a draft model for assisted generation, or None
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.batch_gap_s = batch_gap_s
        self.batches: list[int] = []  # the size of each batch run (recent ones), for tests and benchmarks
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue, waiting for a batch with their options
        self._pending = 0  # submitted and not finished: waiting or running
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._stopping = False

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._stopping = False
            self._worker = threading.Thread(target=self._loop, name="scope-serve-worker", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        """Let the worker finish its batch and end (jobs still waiting get an error)."""
        if self._worker is not None and self._worker.is_alive():
            self._stopping = True
            self._jobs.put(None)
            self._worker.join()

    def submit(self, job: Job) -> None:
        with self._pending_lock:
            if self._pending >= self.max_queue:
                raise QueueFullError(
                    f"{self._pending} requests are already waiting or running (this server's limit is "
                    f"{self.max_queue}); retry later."
                )
            self._pending += 1
        self.start()
        self._jobs.put(job)

    # ------------------------------------------------------------------------- the worker

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self._run_counted(batch)
            if self._stopping and not self._held:
                self._fail_waiting(RuntimeError("The server is shutting down."))
                return

    def _run_counted(self, batch: list[Job]) -> None:
        try:
            self._run(batch)
        except Exception as err:  # a bug here must not end the worker: its jobs hear of it
            for job in batch:
                job.sink(Event("error", error=err))
        finally:
            with self._pending_lock:
                self._pending -= len(batch)

    def _next_batch(self) -> list[Job]:
        """The first waiting job and up to ``max_batch - 1`` more with the same options.

        After a first job arrives on an idle worker, jobs are gathered while they keep arriving
        (gaps under ``batch_gap_s``) for at most ``batch_window_s``: requests sent together run
        together, and a request alone waits only ``batch_gap_s``.
        """
        if not self._held:
            first = self._jobs.get()
            if first is None:
                self._stopping = True
                return []
            self._held.append(first)
            deadline = time.monotonic() + self.batch_window_s
            while len(self._held) < self.max_batch and time.monotonic() < deadline:
                try:
                    job = self._jobs.get(timeout=self.batch_gap_s)
                except queue.Empty:
                    break
                if job is None:
                    self._stopping = True
                    break
                self._held.append(job)
        while not self._stopping:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._stopping = True
                break
            self._held.append(job)
        key = _batch_key(self._held[0].args)
        batch = [job for job in self._held if _batch_key(job.args) == key][: self.max_batch]
        self._held = [job for job in self._held if job not in batch]
        return batch

    def _run(self, batch: list[Job]) -> None:
        batch = [job for job in batch if not job.ended()]  # gone or expired while waiting: never started
        if not batch:
            return
        streams = [TextStream(self.model.tokenizer, job.args.stops) for job in batch]
        try:
            self._generate(batch, streams)
        except Exception as err:
            if len(batch) == 1:
                batch[0].sink(Event("error", error=err))
                return
            for job, stream in zip(batch, streams):  # alone, the error reaches only its own request
                if not job.cancelled.is_set():
                    self._run_alone(job, stream.sent)

    def _run_alone(self, job: Job, sent: str) -> None:
        stream = TextStream(self.model.tokenizer, job.args.stops, sent)
        try:
            self._generate([job], [stream])
        except Exception as err:  # reported to this job's client; the worker serves the next
            job.sink(Event("error", error=err))

    def _generate(self, batch: list[Job], streams: list[TextStream]) -> None:
        self.batches = [*self.batches[-99:], len(batch)]
        args = batch[0].args  # the options every job of the batch shares

        def on_token(row: int, token: int) -> bool:
            if batch[row].ended():
                return False  # this row leaves the batch; the others go on
            delta = streams[row].push(token)
            if delta:
                batch[row].sink(Event("delta", delta))
            return True

        completions = generate_completions(
            self.model,
            [job.args.text for job in batch],
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=[job.args.seed for job in batch],
            stop=args.stops or None,
            steering=[job.args.steering for job in batch],
            positions=args.positions,  # type: ignore[arg-type]  # checked: a mode or token indices
            batch_size=self.max_batch,
            on_token=on_token,
            assistant=self.assistant,
        )
        if self.assistant is not None:
            _log_acceptance(completions)
        for job, stream, completion in zip(batch, streams, completions):
            if job.cancelled.is_set():  # gone, or already told of its deadline
                continue
            rest = stream.finish(completion.text)
            if rest:
                job.sink(Event("delta", rest))
            job.sink(
                Event(
                    "done",
                    finish_reason=completion.finish_reason,
                    prompt_tokens=completion.prompt_length,
                    completion_tokens=len(completion.tokens),
                    assisted=completion.assisted,
                )
            )

    def _fail_waiting(self, err: BaseException) -> None:
        waiting = list(self._held)
        self._held = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                waiting.append(job)
        for job in waiting:
            job.sink(Event("error", error=err))
            with self._pending_lock:
                self._pending -= 1


def _log_acceptance(completions: list[Any]) -> None:
    proposed = sum(c.assisted.proposed for c in completions if c.assisted is not None)
    accepted = sum(c.assisted.accepted for c in completions if c.assisted is not None)
    rate = f"{accepted / proposed:.0%}" if proposed else "n/a"
    log.info("assisted batch of %d: %d of %d draft tokens accepted (%s)", len(completions), accepted, proposed, rate)


def _batch_key(args: GenerationArgs) -> tuple:
    """What every row of one batched call shares."""
    return (args.max_new_tokens, args.temperature, args.top_p, tuple(args.stops), args.positions)
