"""The engine thread: takes one batch at a time from the scheduler, runs it, and posts every message it
produces to the socket thread over an inproc PUSH socket (only the socket thread touches the ROUTER).

Messages of one request leave in order: progress and previews during the run, then its audio chunks and
its terminal message, which `Scheduler.finish` decides (`done`, `error`, or `cancelled` when a cancel got
there first). Model loads and unloads run here too, in queue order, and so does keep-alive expiry.

Long-form and endless requests (`Stream`) run window by window: each is a generator of
`magnet_rt.longform` advanced one window per turn of the loop, between the batches of other requests, so
they never batch with others and never starve them. A window's `window` event and audio chunks leave as
soon as it is decoded. An endless request is paced to real time: its next window is decoded only while it
has sent less than `endless_ahead_s` seconds of audio beyond the time since its first audio (0: unpaced),
so it neither floods a client that plays it nor takes the engine from other work. An unload of a model a
stream still uses waits until the stream ends.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import zmq

from magnet_rt.audio import DEFAULT_LOUDNESS_LUFS, finish_takes
from magnet_rt.longform import endless, stream_long
from protocol import (
    AudioChunk,
    Cancelled,
    Done,
    Error,
    ErrorCode,
    Generate,
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
from .scheduler import Scheduler, State, Ticket

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Stream:
    """A running long-form or endless request: its window generator and what has been sent."""

    ticket: Ticket
    pipe: Any
    chunks: Any  # Iterator[magnet_rt.longform.Chunk]
    seq: int = 0
    windows: int = 0
    samples: int = 0
    first_audio_s: float | None = None
    first_audio_at: float | None = None  # scheduler clock
    sample_rate: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class Worker(threading.Thread):
    def __init__(self, zctx: zmq.Context, endpoint: str, sched: Scheduler, models: ModelManager,
                 max_message_bytes: int, endless_ahead_s: float = 0.0):
        super().__init__(name="magnet-engine", daemon=True)
        self.zctx, self.endpoint, self.sched, self.models = zctx, endpoint, sched, models
        self.max_bytes = max_message_bytes
        self.endless_ahead_s = endless_ahead_s
        self.push: zmq.Socket | None = None
        self.streams: list[Stream] = []  # running long-form / endless requests, advanced in turn
        self.deferred: list[Ticket] = []  # unloads waiting for the streams on their model

    # ---- loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.push = self.zctx.socket(zmq.PUSH)
        self.push.sndhwm = 0  # the socket thread drains it continuously; never drop, never block on HWM
        self.push.connect(self.endpoint)
        try:
            while True:
                for t in self.sched.unprepared():
                    self._prepare(t)
                wait = min([0.5, *(self._wait_s(st) for st in self.streams)])
                batch = self.sched.next_batch(timeout=wait)
                if batch is None and not self.streams and not self.deferred:
                    break
                if batch:
                    if batch[0].kind == "load":
                        self._load(batch[0])
                    elif batch[0].kind == "unload":
                        self._unload(batch[0])
                    elif batch[0].payload.streaming:
                        self._start_stream(batch[0])
                    else:
                        self._render(batch)
                due = next((st for st in self.streams if self._wait_s(st) <= 0), None)
                if due is not None:  # round robin: one window per turn, then to the back of the line
                    self.streams.remove(due)
                    self._advance(due)
                elif not batch and not self.streams:
                    self._expire_models()
                for t in [t for t in self.deferred if t.model not in {s.ticket.model for s in self.streams}]:
                    self.deferred.remove(t)
                    self._unload(t)
        except Exception:  # noqa: BLE001 - a bug here: the socket thread sees this thread end and answers
            log.critical("engine worker crashed", exc_info=True)
        finally:
            self.push.close(linger=-1)

    def _emit(self, t: Ticket, msg: Message) -> None:
        self.push.send_multipart([t.client, pack(msg, self.max_bytes)])

    def _end(self, t: Ticket, exc: BaseException | None = None) -> None:
        """End `t` with an error (or `cancelled` if a cancel got there first)."""
        outcome = self.sched.finish(t)
        if outcome == "cancelled" or (outcome == "ok" and exc is None):
            self._emit(t, Cancelled(id=t.rid, by=t.cancelled_by))
        elif outcome == "ok":
            err = to_protocol_error(exc, t.rid)
            log.info("request failed: %s", err, extra=ctx(t.rid, t.client, code=err.code.value))
            self._emit(t, Error.from_exception(err, t.rid))

    # ---- models -----------------------------------------------------------------------------------------
    def _load(self, t: Ticket) -> None:
        try:
            load_s = self.models.load(t.model, t.payload)
        except Exception as exc:  # noqa: BLE001 - answered (unknown_model / internal)
            self._end(t, to_protocol_error(exc, t.rid, model=t.model))
            return
        if self.sched.finish(t) != "gone":
            self._emit(t, LoadReply(id=t.rid, model=t.model, load_s=load_s))

    def _unload(self, t: Ticket) -> None:
        if any(s.ticket.model == t.model for s in self.streams):
            self.deferred.append(t)  # running work on it finishes first
            return
        self.models.unload(t.model)
        if self.sched.finish(t) != "gone":
            self._emit(t, UnloadReply(id=t.rid, model=t.model))

    def _expire_models(self) -> None:
        for name in self.models.expired(self.sched.busy_models()):
            log.info("model %s idle past its keep-alive", name, extra={"ctx": {"model": name}})
            self.models.unload(name)

    # ---- renders ----------------------------------------------------------------------------------------
    def _prepare(self, t: Ticket) -> None:
        pipe = self.models.get(t.model)
        try:
            if pipe is None:
                raise ProtocolError(ErrorCode.MODEL_NOT_LOADED, f"model {t.model} was unloaded",
                                    details={"model": t.model})
            render.prepare(t.payload, pipe, cancelled=lambda: t.cancel_requested or t.state == State.FINISHED)
        except Exception as exc:  # noqa: BLE001 - answered with its typed error (Cancelled: `cancelled`)
            self._end(t, None if t.cancel_requested else exc)
            return
        self.sched.set_prepared(t, (t.model, t.payload.job.batch_key()))

    def _render(self, batch: list[Ticket]) -> None:
        model = batch[0].model
        pipe = self.models.get(model)
        if pipe is None:
            for t in batch:
                self._end(t, ProtocolError(ErrorCode.MODEL_NOT_LOADED, f"model {model} is not loaded",
                                           details={"model": model}))
            return
        for t in batch:
            log.info("running", extra=ctx(t.rid, t.client, batch_size=len(batch), rows=t.rows,
                                          queue_s=t.started_at - t.accepted_at))
        failures: dict[int, BaseException] = {}  # ticket index -> why it left the batch
        # a ticket has one job, or one per variation (hybrid: each its own pinned prefix)
        jobs = [(ti, k, job) for ti, t in enumerate(batch) for k, job in enumerate(t.payload.jobs)]

        def on_step(ji: int, ev) -> None:
            self.sched.note_step()
            ti, k, _ = jobs[ji]
            t = batch[ti]
            try:
                stream = t.payload.msg.stream
                if stream.progress and k == 0:
                    self._emit(t, Progress(id=t.rid, step=ev.step, total=ev.total_steps, stage=ev.stage,
                                           stage_step=ev.stage_step, stage_steps=ev.stage_steps,
                                           elapsed_s=self.sched.clock() - t.accepted_at,
                                           window=t.extra.get("window", 0) if t.payload.windows > 1 else None))
                if ev.codes is not None and stream.preview and ev.stage < pipe.lm.n_q - 1:
                    self._preview(t, pipe, ev, first=k * jobs[ji][2].rows)
            except Exception as exc:  # noqa: BLE001 - this request leaves the batch; the others go on
                failures[ti] = exc

        try:
            results = pipe.run_batch([job for *_, job in jobs], on_step=on_step,
                                     is_cancelled=lambda ji: batch[jobs[ji][0]].cancel_requested
                                     or jobs[ji][0] in failures)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            for t in batch:
                self._end(t, exc)
            return
        finally:
            self.models.touch(model)
        for ti, t in enumerate(batch):
            if ti in failures:
                self._end(t, failures[ti])
                continue
            mine = [res for (tj, _, _), res in zip(jobs, results, strict=True) if tj == ti]
            if any(r is None for r in mine):
                self._deliver(t, None, pipe)
            else:
                self._deliver(t, t.payload.merge(mine) if t.payload.merge else mine[0], pipe)

    def _preview(self, t: Ticket, pipe, ev, first: int = 0) -> None:
        k = ev.stage + 1
        wav = pipe.codec.decode(ev.codes[:, :k]).float().cpu().numpy()  # [rows, 1, N]
        n = round(ev.codes.shape[-1] / pipe.frame_rate * pipe.sample_rate)
        msg = t.payload.msg
        for v, out in enumerate(wav[..., :n], start=first):
            for seq, start, last, data in render.chunks(out, pipe.sample_rate, msg.chunk_s, msg.format):
                self._emit(t, Preview(id=t.rid, data=data, format=msg.format, sample_rate=pipe.sample_rate,
                                      channels=out.shape[0], variation=v, seq=seq, last=last, start_s=start,
                                      codebooks=k))

    def _deliver(self, t: Ticket, res, pipe) -> None:
        if res is None:  # left the batch: cancelled
            self._end(t)
            return
        plan, msg = t.payload, t.payload.msg
        try:  # build every message first: once `finish` says ok, nothing may fail before `done`
            if plan.step is not None and (job := plan.step(res)) is not None:  # the next window
                plan.jobs, t.extra["window"] = [job], t.extra.get("window", 0) + 1
                if not self.sched.requeue(t, (t.model, job.batch_key())):
                    self._end(t)
                return
            if plan.finish is not None:
                res = plan.finish(res)
            audio, sr = res.audio, res.sample_rate
            if isinstance(msg, Generate):  # a whole take: no DC, no click, -14 LUFS unless asked otherwise
                target = None if not msg.normalize else DEFAULT_LOUDNESS_LUFS if msg.loudness is None else msg.loudness
                audio = finish_takes(audio, sr, target)
            frames_out = []
            if msg.stream.audio:
                for v, out in enumerate(audio):
                    for seq, start, last, data in render.chunks(out, sr, msg.chunk_s, msg.format):
                        frames_out.append(AudioChunk(id=t.rid, data=data, format=msg.format, sample_rate=sr,
                                                     channels=out.shape[0], variation=v, seq=seq, last=last,
                                                     start_s=start))
            n = audio.shape[-1]
            now = self.sched.clock()
            timings = {"queue": t.started_at - t.accepted_at,
                       **{k: float(v) for k, v in res.timings.items()}, "wall": now - t.accepted_at}
            done = Done(id=t.rid, seed=plan.seed, seeds=tuple(res.seeds), frames=round(n / sr * pipe.frame_rate),
                        duration_s=n / sr, sample_rate=sr, timings={k: max(0.0, v) for k, v in timings.items()},
                        batch_size=res.batch_size, model=t.model,
                        time_to_first_audio_s=max(0.0, now - t.accepted_at) if frames_out else None)
            packed = [pack(m, self.max_bytes) for m in (*frames_out, done)]
        except Exception as exc:  # noqa: BLE001 - answered with its typed error
            self._end(t, exc)
            return
        outcome = self.sched.finish(t)
        if outcome == "cancelled":
            self._emit(t, Cancelled(id=t.rid, by=t.cancelled_by))
            return
        if outcome == "gone":
            return
        for data in packed:
            self.push.send_multipart([t.client, data])
        self.sched.record_timings(done.timings)
        log.info("done", extra=ctx(t.rid, t.client, batch_size=res.batch_size, chunks=len(frames_out),
                                   **{f"t_{k}": round(v, 4) for k, v in done.timings.items()}))

    # ---- long-form and endless ------------------------------------------------------------------------------
    def _start_stream(self, t: Ticket) -> None:
        pipe = self.models.get(t.model)
        if pipe is None:
            self._end(t, ProtocolError(ErrorCode.MODEL_NOT_LOADED, f"model {t.model} is not loaded",
                                       details={"model": t.model}))
            return
        plan = t.payload
        log.info("running %s", plan.mode, extra=ctx(t.rid, t.client, queue_s=t.started_at - t.accepted_at))

        def on_step(window: int, ev) -> None:
            self.sched.note_step()
            if plan.msg.stream.progress:
                self._emit(t, Progress(id=t.rid, step=ev.step, total=ev.total_steps, stage=ev.stage,
                                       stage_step=ev.stage_step, stage_steps=ev.stage_steps,
                                       elapsed_s=self.sched.clock() - t.accepted_at, window=window))

        kw = dict(overlap_s=plan.overlap_s, is_cancelled=lambda: t.cancel_requested, on_step=on_step)
        chunks = (endless(pipe, plan.prompt, plan.params, plan.seed, **kw) if plan.mode == "endless" else
                  stream_long(pipe, plan.prompt, plan.duration_s, plan.params, plan.seed, **kw))
        t.extra["window"] = 0
        self.streams.append(Stream(t, pipe, chunks))

    def _wait_s(self, st: Stream) -> float:
        """Seconds until the stream's next window is due (<= 0: now)."""
        t = st.ticket
        if (self.endless_ahead_s <= 0 or t.payload.mode != "endless" or st.first_audio_at is None
                or t.cancel_requested):
            return 0.0
        ahead = st.samples / st.sample_rate - (self.sched.clock() - st.first_audio_at)
        return ahead - self.endless_ahead_s

    def _advance(self, st: Stream) -> None:
        """Decode the stream's next window and send it; end the request when the stream is over."""
        t, plan = st.ticket, st.ticket.payload
        msg = plan.msg
        try:
            chunk = next(st.chunks, None)
            self.models.touch(t.model)
            if chunk is None:  # stopped before its final window: cancelled
                self._end(t)
                return
            sr, now = chunk.sample_rate, self.sched.clock()
            out = []
            if chunk.window >= 0:
                st.windows += 1
                t.extra["window"] = st.windows
                for k, v in chunk.timings.items():
                    st.timings[k] = st.timings.get(k, 0.0) + float(v) if k != "since_start" else float(v)
                out.append(Window(id=t.rid, window=chunk.window, prompt=chunk.prompt, seed=chunk.seed,
                                  start_s=chunk.start / sr, duration_s=chunk.audio.shape[-1] / sr,
                                  elapsed_s=max(0.0, now - t.accepted_at)))
            if msg.stream.audio and chunk.audio.shape[-1]:
                for _, start, last, data in render.chunks(chunk.audio, sr, msg.chunk_s, msg.format):
                    out.append(AudioChunk(id=t.rid, data=data, format=msg.format, sample_rate=sr,
                                          channels=chunk.audio.shape[0], variation=0, seq=st.seq,
                                          last=last and chunk.final, start_s=chunk.start / sr + start))
                    st.seq += 1
                if st.first_audio_s is None:
                    st.first_audio_s, st.first_audio_at = max(0.0, now - t.accepted_at), now
            st.samples, st.sample_rate = chunk.start + chunk.audio.shape[-1], sr
            packed = [pack(m, self.max_bytes) for m in out]
        except Exception as exc:  # noqa: BLE001 - answered with its typed error
            st.chunks.close()
            self._end(t, exc)
            return
        for data in packed:
            self.push.send_multipart([t.client, data])
        if not chunk.final:
            self.streams.append(st)
            return
        if chunk.window < 0:  # the held-back tail, flushed after a cancel
            self._end(t)
            return
        self._stream_done(st, chunk.sample_rate)

    def _stream_done(self, st: Stream, sr: int) -> None:
        t, plan = st.ticket, st.ticket.payload
        now = self.sched.clock()
        timings = {"queue": t.started_at - t.accepted_at, "wall": now - t.accepted_at,
                   **{k: v for k, v in st.timings.items() if k != "since_start"}}
        done = Done(id=t.rid, seed=plan.seed, seeds=(plan.seed,), frames=round(st.samples / sr * st.pipe.frame_rate),
                    duration_s=st.samples / sr, sample_rate=sr, timings={k: max(0.0, v) for k, v in timings.items()},
                    batch_size=1, model=t.model, time_to_first_audio_s=st.first_audio_s, windows=st.windows)
        outcome = self.sched.finish(t)
        if outcome == "cancelled":
            self._emit(t, Cancelled(id=t.rid, by=t.cancelled_by))
        elif outcome == "ok":
            self._emit(t, done)
            self.sched.record_timings(done.timings)
            log.info("done", extra=ctx(t.rid, t.client, windows=st.windows, ttfa_s=st.first_audio_s,
                                       duration_s=done.duration_s))
