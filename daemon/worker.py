"""The engine thread: takes one batch at a time from the scheduler, runs it, and posts every message it
produces to the socket thread over an inproc PUSH socket (only the socket thread touches the ROUTER).

What a ticket asks for is its payload's type (`Work`): `LoadModel`, `UnloadModel`, or one of daemon.render's
plans; `Worker.handlers` maps each type to the method that runs it. Every ticket ends in `_terminate`, the
one place that asks `Scheduler.finish` whether a cancel got there first and sends the terminal message
(`done` or a reply, `error`, or `cancelled`). Messages of one request leave in order: progress and previews
during the run, then its audio chunks and its terminal message. Keep-alive expiry runs here too.

Long-form and endless requests (`StreamPlan`) run window by window: each is a generator of
`magnet_rt.longform` advanced one window per turn of the loop (`WindowedRun`), between the batches of other
requests, so they never batch with others and never starve them. A window's `window` event and audio chunks
leave as soon as it is decoded. An endless request is paced to real time: its next window is decoded only
while it has sent less than `endless_ahead_s` seconds of audio beyond the time since its first audio (0:
unpaced), so it neither floods a client that plays it nor takes the engine from other work. An unload of a
model a stream still uses waits until the stream ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from magnet_rt.jobs import Pipeline
from magnet_rt.longform import Chunk
from protocol import (
    Cancelled,
    Done,
    Error,
    ErrorCode,
    LoadReply,
    Message,
    Preview,
    Progress,
    ProtocolError,
    UnloadReply,
    Window,
    pack,
)

from . import render
from .errors import to_protocol_error
from .logs import ctx
from .models import ModelManager
from .render import BatchPlan, HybridPlan, SourcePlan, StreamPlan, TakePlan
from .scheduler import Scheduler, State, Ticket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadModel:
    """Make the ticket's model resident, with this keep-alive (None: the daemon's)."""

    keep_alive_s: float | None = None


@dataclass(frozen=True)
class UnloadModel:
    """Release the ticket's model (once no running stream uses it)."""


Work = LoadModel | UnloadModel | TakePlan | HybridPlan | SourcePlan | StreamPlan  # a Ticket's payload


@dataclass(eq=False)
class WindowedRun:
    """A running long-form or endless request: its window generator and what has been sent."""

    ticket: Ticket
    pipe: Pipeline
    chunks: Iterator[Chunk]
    seq: int = 0
    windows: int = 0
    samples: int = 0
    first_audio_s: float | None = None
    first_audio_at: float | None = None  # scheduler clock
    sample_rate: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _not_loaded(model: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MODEL_NOT_LOADED, f"model {model} is not loaded", details={"model": model})


class Worker(threading.Thread):
    def __init__(self, zctx: zmq.Context, endpoint: str, sched: Scheduler, models: ModelManager,
                 max_message_bytes: int, endless_ahead_s: float = 0.0):
        super().__init__(name="magnet-engine", daemon=True)
        self.zctx, self.endpoint, self.sched, self.models = zctx, endpoint, sched, models
        self.max_bytes = max_message_bytes
        self.endless_ahead_s = endless_ahead_s
        self.push: zmq.Socket | None = None
        self.runs: list[WindowedRun] = []  # running long-form / endless requests, advanced in turn
        self.deferred: list[Ticket] = []  # unloads waiting for the runs on their model
        self.handlers: dict[type, Callable[[list[Ticket]], None]] = {
            LoadModel: self._load, UnloadModel: self._unload, StreamPlan: self._start_stream,
            TakePlan: self._render, HybridPlan: self._render, SourcePlan: self._render,
        }

    # ---- loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.push = self.zctx.socket(zmq.PUSH)
        self.push.sndhwm = 0  # the socket thread drains it continuously; never drop, never block on HWM
        self.push.connect(self.endpoint)
        try:
            while self._turn():
                pass
        except Exception:  # noqa: BLE001 - a bug here: the socket thread sees this thread end and answers
            log.critical("engine worker crashed", exc_info=True)
        finally:
            self.push.close(linger=-1)

    def _turn(self) -> bool:
        """One turn: prepare what needs it, run one batch, decode one due window. False once closed and idle."""
        for t in self.sched.unprepared():
            self._prepare(t)
        batch = self.sched.next_batch(timeout=min([0.5, *(self._wait_s(r) for r in self.runs)]))
        if batch is None and not self.runs and not self.deferred:
            return False
        if batch:  # the scheduler batches only tickets of one kind: the head's payload says which
            self.handlers[type(batch[0].payload)](batch)
        due = next((r for r in self.runs if self._wait_s(r) <= 0), None)
        if due is not None:  # round robin: one window per turn, then to the back of the line
            self.runs.remove(due)
            self._advance(due)
        elif not batch and not self.runs:
            self._expire_models()
        busy = {r.ticket.model for r in self.runs}
        for t in [t for t in self.deferred if t.model not in busy]:
            self.deferred.remove(t)
            self._unload([t])
        return True

    def _emit(self, t: Ticket, msg: Message) -> None:
        self.push.send_multipart([t.client, pack(msg, self.max_bytes)])

    def _terminate(self, t: Ticket, outcome: Sequence[bytes] | BaseException | None, *, stands: bool = False) -> bool:
        """End `t`: the one place a ticket ends on this thread. `outcome` is its packed terminal frames (audio
        chunks and `done`, or a reply), an exception (answered with its typed `error`), or None (it left its
        batch: `cancelled`). A cancel that got there first wins, except over frames that `stands` (a model
        that did load). Returns whether the frames were sent (the caller records what it did)."""
        state = self.sched.finish(t)
        if state == "gone":  # ended already (e.g. cancelled while queued): nothing more to send
            return False
        frames = not isinstance(outcome, BaseException) and outcome is not None
        if outcome is None or (state == "cancelled" and not (frames and stands)):
            self._emit(t, Cancelled(id=t.rid, by=t.cancelled_by))
            return False
        if not frames:
            err = to_protocol_error(outcome, t.rid)
            log.info("request failed: %s", err, extra=ctx(t.rid, t.client, code=err.code.value))
            self._emit(t, Error.from_exception(err, t.rid))
            return False
        for data in outcome:
            self.push.send_multipart([t.client, data])
        return True

    # ---- messages (each built here only) ------------------------------------------------------------------
    def _progress(self, t: Ticket, ev: Any, window: int | None) -> Progress:
        return Progress(id=t.rid, step=ev.step, total=ev.total_steps, stage=ev.stage, stage_step=ev.stage_step,
                        stage_steps=ev.stage_steps, elapsed_s=self.sched.clock() - t.accepted_at, window=window)

    def _done(self, t: Ticket, samples: int, sr: int, frame_rate: float, *, seeds: Sequence[int], batch_size: int,
              engine_timings: dict[str, float], first_audio_s: float | None, windows: int | None = None) -> Done:
        now = self.sched.clock()
        timings = {"queue": t.started_at - t.accepted_at, **engine_timings, "wall": now - t.accepted_at}
        timings = {k: max(0.0, float(v)) for k, v in timings.items()}
        return Done(id=t.rid, seed=t.payload.seed, seeds=tuple(seeds), frames=round(samples / sr * frame_rate),
                    duration_s=samples / sr, sample_rate=sr, timings=timings,
                    batch_size=batch_size, model=t.model, time_to_first_audio_s=first_audio_s, windows=windows)

    def _finished(self, t: Ticket, done: Done, **facts: Any) -> None:
        self.sched.record_timings(done.timings)
        log.info("done", extra=ctx(t.rid, t.client, batch_size=done.batch_size, windows=done.windows,
                                   ttfa_s=done.time_to_first_audio_s, duration_s=done.duration_s, **facts,
                                   **{f"t_{k}": round(v, 4) for k, v in done.timings.items()}))

    # ---- models -----------------------------------------------------------------------------------------
    def _load(self, batch: list[Ticket]) -> None:
        t = batch[0]
        try:
            load_s = self.models.load(t.model, t.payload.keep_alive_s)
        except Exception as exc:  # noqa: BLE001 - answered (unknown_model / internal)
            self._terminate(t, to_protocol_error(exc, t.rid, model=t.model))
            return
        self._terminate(t, [pack(LoadReply(id=t.rid, model=t.model, load_s=load_s), self.max_bytes)], stands=True)

    def _unload(self, batch: list[Ticket]) -> None:
        t = batch[0]
        if any(r.ticket.model == t.model for r in self.runs):
            self.deferred.append(t)  # running work on it finishes first
            return
        self.models.unload(t.model)
        self._terminate(t, [pack(UnloadReply(id=t.rid, model=t.model), self.max_bytes)], stands=True)

    def _expire_models(self) -> None:
        for name in self.models.expired(self.sched.busy_models()):
            log.info("model %s idle past its keep-alive", name, extra={"ctx": {"model": name}})
            self.models.unload(name)

    # ---- batched renders ----------------------------------------------------------------------------------
    def _prepare(self, t: Ticket) -> None:
        pipe = self.models.get(t.model)
        plan: BatchPlan = t.payload
        try:
            if pipe is None:
                raise ProtocolError(ErrorCode.MODEL_NOT_LOADED, f"model {t.model} was unloaded",
                                    details={"model": t.model})
            plan.prepare(pipe, cancelled=lambda: t.cancel_requested or t.state == State.FINISHED)
        except Exception as exc:  # noqa: BLE001 - answered with its typed error (DecodeCancelled: `cancelled`)
            self._terminate(t, None if t.cancel_requested else exc)
            return
        self.sched.set_prepared(t, (t.model, plan.job.batch_key()))

    def _render(self, batch: list[Ticket]) -> None:
        model = batch[0].model
        pipe = self.models.get(model)
        if pipe is None:
            for t in batch:
                self._terminate(t, _not_loaded(model))
            return
        for t in batch:
            log.info("running", extra=ctx(t.rid, t.client, batch_size=len(batch), rows=t.rows,
                                          queue_s=t.started_at - t.accepted_at))
        failures: dict[int, BaseException] = {}  # ticket index -> why it left the batch
        # a ticket has one job, or one per variation (hybrid: each its own pinned prefix)
        jobs = [(ti, k, job) for ti, t in enumerate(batch) for k, job in enumerate(t.payload.jobs)]
        try:
            results = pipe.run_batch([job for *_, job in jobs], on_step=self._step_events(batch, jobs, pipe, failures),
                                     is_cancelled=lambda ji: batch[jobs[ji][0]].cancel_requested
                                     or jobs[ji][0] in failures)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            for t in batch:
                self._terminate(t, exc)
            return
        finally:
            self.models.touch(model)
        for ti, t in enumerate(batch):
            if ti in failures:
                self._terminate(t, failures[ti])
                continue
            mine = [res for (tj, _, _), res in zip(jobs, results, strict=True) if tj == ti]
            self._deliver(t, None if any(r is None for r in mine) else t.payload.combine(mine), pipe)

    def _step_events(self, batch: list[Ticket], jobs: list[tuple[int, int, Any]], pipe: Pipeline,
                     failures: dict[int, BaseException]) -> Callable[[int, Any], None]:
        """The batch's step listener: progress (first job of a ticket) and previews of each request."""

        def on_step(ji: int, ev) -> None:
            self.sched.note_step()
            ti, k, job = jobs[ji]
            t = batch[ti]
            plan: BatchPlan = t.payload
            try:
                if plan.msg.stream.progress and k == 0:
                    self._emit(t, self._progress(t, ev, plan.window if plan.windows > 1 else None))
                if ev.codes is not None and plan.msg.stream.preview and ev.stage < pipe.lm.n_q - 1:
                    self._preview(t, pipe, ev, first=k * job.rows)
            except Exception as exc:  # noqa: BLE001 - this request leaves the batch; the others go on
                failures[ti] = exc

        return on_step

    def _preview(self, t: Ticket, pipe: Pipeline, ev, first: int = 0) -> None:
        k = ev.stage + 1
        wav = pipe.codec.decode(ev.codes[:, :k]).float().cpu().numpy()  # [rows, 1, N]
        n = round(ev.codes.shape[-1] / pipe.frame_rate * pipe.sample_rate)
        for v, out in enumerate(wav[..., :n], start=first):
            for msg in render.audio_messages(t.rid, t.payload.msg, out, pipe.sample_rate, variation=v,
                                             kind=Preview, codebooks=k):
                self._emit(t, msg)

    def _deliver(self, t: Ticket, res, pipe: Pipeline) -> None:
        if res is None:  # left the batch: cancelled
            self._terminate(t, None)
            return
        plan: BatchPlan = t.payload
        try:  # build every message first: once `finish` says ok, nothing may fail before `done`
            if (job := plan.next_job(res)) is not None:  # the next window
                plan.jobs, plan.window = [job], plan.window + 1
                if not self.sched.requeue(t, (t.model, job.batch_key())):
                    self._terminate(t, None)
                return
            res = plan.finish(res)
            audio, sr = res.audio, res.sample_rate
            chunks = [m for v, out in enumerate(audio) if plan.msg.stream.audio
                      for m in render.audio_messages(t.rid, plan.msg, out, sr, variation=v)]
            ttfa = max(0.0, self.sched.clock() - t.accepted_at) if chunks else None
            done = self._done(t, audio.shape[-1], sr, pipe.frame_rate, seeds=res.seeds, batch_size=res.batch_size,
                              engine_timings=res.timings, first_audio_s=ttfa)
            packed = [pack(m, self.max_bytes) for m in (*chunks, done)]
        except Exception as exc:  # noqa: BLE001 - answered with its typed error
            self._terminate(t, exc)
            return
        if self._terminate(t, packed):
            self._finished(t, done, chunks=len(chunks))

    # ---- long-form and endless ------------------------------------------------------------------------------
    def _start_stream(self, batch: list[Ticket]) -> None:
        t = batch[0]
        pipe = self.models.get(t.model)
        if pipe is None:
            self._terminate(t, _not_loaded(t.model))
            return
        plan: StreamPlan = t.payload
        log.info("running %s", plan.wire_mode, extra=ctx(t.rid, t.client, queue_s=t.started_at - t.accepted_at))

        def on_step(window: int, ev) -> None:
            self.sched.note_step()
            if plan.msg.stream.progress:
                self._emit(t, self._progress(t, ev, window))

        plan.window = 0
        self.runs.append(WindowedRun(t, pipe, plan.chunks(pipe, on_step, lambda: t.cancel_requested)))

    def _wait_s(self, run: WindowedRun) -> float:
        """Seconds until the run's next window is due (<= 0: now)."""
        t = run.ticket
        if (self.endless_ahead_s <= 0 or not t.payload.endless or run.first_audio_at is None
                or t.cancel_requested):
            return 0.0
        ahead = run.samples / run.sample_rate - (self.sched.clock() - run.first_audio_at)
        return ahead - self.endless_ahead_s

    def _advance(self, run: WindowedRun) -> None:
        """Decode the run's next window and send it; end the request when the stream is over."""
        t = run.ticket
        try:
            chunk = next(run.chunks, None)
            self.models.touch(t.model)
            if chunk is None:  # stopped before its final window: cancelled
                self._terminate(t, None)
                return
            packed = [pack(m, self.max_bytes) for m in self._window_messages(run, chunk)]
        except Exception as exc:  # noqa: BLE001 - answered with its typed error
            run.chunks.close()
            self._terminate(t, exc)
            return
        for data in packed:
            self.push.send_multipart([t.client, data])
        if not chunk.final:
            self.runs.append(run)
        elif chunk.window < 0:  # the held-back tail, flushed after a cancel
            self._terminate(t, None)
        else:
            done = self._done(t, run.samples, chunk.sample_rate, run.pipe.frame_rate, seeds=(t.payload.seed,),
                              batch_size=1, engine_timings={k: v for k, v in run.timings.items() if k != "since_start"},
                              first_audio_s=run.first_audio_s, windows=run.windows)
            if self._terminate(t, [pack(done, self.max_bytes)]):
                self._finished(t, done)

    def _window_messages(self, run: WindowedRun, chunk: Chunk) -> list[Message]:
        """A decoded window's `window` event and audio chunks; the run's counters brought up to date."""
        t, msg = run.ticket, run.ticket.payload.msg
        sr, now = chunk.sample_rate, self.sched.clock()
        out: list[Message] = []
        if chunk.window >= 0:
            run.windows += 1
            t.payload.window = run.windows
            for k, v in chunk.timings.items():
                run.timings[k] = run.timings.get(k, 0.0) + float(v) if k != "since_start" else float(v)
            out.append(Window(id=t.rid, window=chunk.window, prompt=chunk.prompt, seed=chunk.seed,
                              start_s=chunk.start / sr, duration_s=chunk.audio.shape[-1] / sr,
                              elapsed_s=max(0.0, now - t.accepted_at)))
        if msg.stream.audio and chunk.audio.shape[-1]:
            audio = render.audio_messages(t.rid, msg, chunk.audio, sr, first_seq=run.seq,
                                          start_s=chunk.start / sr, final=chunk.final)
            out += audio
            run.seq += len(audio)
            if run.first_audio_s is None:
                run.first_audio_s, run.first_audio_at = max(0.0, now - t.accepted_at), now
        run.samples, run.sample_rate = chunk.start + chunk.audio.shape[-1], sr
        return out
