"""The engine thread: takes one batch at a time from the scheduler, runs it, and posts every message it
produces to the socket thread over an inproc PUSH socket (only the socket thread touches the ROUTER).

Messages of one request leave in order: progress and previews during the run, then its audio chunks and
its terminal message, which `Scheduler.finish` decides (`done`, `error`, or `cancelled` when a cancel got
there first). Model loads and unloads run here too, in queue order, and so does keep-alive expiry.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import zmq

from magnet_rt.audio import loudness_normalize
from protocol import (
    AudioChunk,
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
    pack,
)

from . import render
from .errors import to_protocol_error
from .logs import ctx
from .models import ModelManager
from .scheduler import Scheduler, Ticket

log = logging.getLogger(__name__)


class Worker(threading.Thread):
    def __init__(self, zctx: zmq.Context, endpoint: str, sched: Scheduler, models: ModelManager,
                 max_message_bytes: int):
        super().__init__(name="magnet-engine", daemon=True)
        self.zctx, self.endpoint, self.sched, self.models = zctx, endpoint, sched, models
        self.max_bytes = max_message_bytes
        self.push: zmq.Socket | None = None

    # ---- loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.push = self.zctx.socket(zmq.PUSH)
        self.push.sndhwm = 0  # the socket thread drains it continuously; never drop, never block on HWM
        self.push.connect(self.endpoint)
        try:
            while True:
                for t in self.sched.unprepared():
                    self._prepare(t)
                batch = self.sched.next_batch(timeout=0.5)
                if batch is None:
                    break
                if not batch:
                    self._expire_models()
                    continue
                if batch[0].kind == "load":
                    self._load(batch[0])
                elif batch[0].kind == "unload":
                    self._unload(batch[0])
                else:
                    self._render(batch)
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
            render.prepare(t.payload, pipe)
        except Exception as exc:  # noqa: BLE001 - answered with its typed error
            self._end(t, exc)
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
        failures: dict[int, BaseException] = {}

        def on_step(ji: int, ev) -> None:
            self.sched.note_step()
            t = batch[ji]
            try:
                stream = t.payload.msg.stream
                if stream.progress:
                    self._emit(t, Progress(id=t.rid, step=ev.step, total=ev.total_steps, stage=ev.stage,
                                           stage_step=ev.stage_step, stage_steps=ev.stage_steps,
                                           elapsed_s=self.sched.clock() - t.accepted_at))
                if ev.codes is not None and stream.preview and ev.stage < pipe.lm.n_q - 1:
                    self._preview(t, pipe, ev)
            except Exception as exc:  # noqa: BLE001 - this request leaves the batch; the others go on
                failures[ji] = exc

        try:
            results = pipe.run_batch([t.payload.job for t in batch], on_step=on_step,
                                     is_cancelled=lambda ji: batch[ji].cancel_requested or ji in failures)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            for t in batch:
                self._end(t, exc)
            return
        finally:
            self.models.touch(model)
        for ji, (t, res) in enumerate(zip(batch, results, strict=True)):
            if ji in failures:
                self._end(t, failures[ji])
            else:
                self._deliver(t, res, pipe)

    def _preview(self, t: Ticket, pipe, ev) -> None:
        k = ev.stage + 1
        wav = pipe.codec.decode(ev.codes[:, :k]).float().cpu().numpy()  # [rows, 1, N]
        n = round(ev.codes.shape[-1] / pipe.frame_rate * pipe.sample_rate)
        msg = t.payload.msg
        for v, out in enumerate(wav[..., :n]):
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
            if plan.finish is not None:
                res = plan.finish(res)
            audio, sr = res.audio, res.sample_rate
            if plan.loudness is not None:
                audio = np.stack([loudness_normalize(a, sr, plan.loudness) for a in audio])
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
                        batch_size=res.batch_size, model=t.model)
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
