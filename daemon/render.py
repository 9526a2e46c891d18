"""Render requests (generate, inpaint, continue): admission on the socket thread, preparation on the worker,
and the wire form of the results (chunked PCM).

`admit` runs every check that needs no engine work, so a bad request gets its error before `accepted`:
preset and parameters, seed, duration, the mode (plain, rescored, hybrid, long-form, endless), the source
audio (decoded, or read through the path policy) and its region. `prepare` then encodes the source on the
worker thread (inpaint, continue) or runs the autoregressive phase (hybrid); a plain generate job is ready
at admission. Long-form and endless requests have no job: the worker runs them window by window
(magnet_rt.longform), reading their prompt from a `WindowPrompt` that `set_prompt` may change.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from magnet_rt.longform import DEFAULT_OVERLAP_S
from magnet_rt.params import DecodeParams
from magnet_rt.pipeline import Job, JobResult
from magnet_rt.presets import preset_names, resolve_params
from protocol import (
    MAX_LONG_DURATION_S,
    MAX_SOURCE_S,
    MIN_REGION_S,
    Continue,
    ErrorCode,
    Generate,
    Inpaint,
    ProtocolError,
    Render,
    pcm_decode,
    pcm_encode,
)

from .errors import to_protocol_error
from .files import PathPolicy

MAX_ENGINE_SEED = 2**63 - 1024  # the engine's bound; seeds of variations are seed + k
PICKED_SEED_BITS = 52  # seeds the daemon picks stay exact in a double (JavaScript), also as seed + k or per window
STREAMING = ("long", "endless")


class WindowPrompt:
    """The prompt of a long-form or endless request: read by the engine once per window (worker thread),
    set by `set_prompt` (socket thread). `set` returns the index of the first window that will read it."""

    def __init__(self, prompt: str | None):
        self._prompt, self._reads, self._lock = prompt, 0, threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            self._reads += 1
            return self._prompt

    def set(self, prompt: str) -> int:
        with self._lock:
            self._prompt = prompt
            return self._reads


@dataclass
class RenderPlan:
    msg: Render
    params: DecodeParams
    seed: int
    outputs: int
    jobs: list[Job] | None = None  # plain generate: at admission; inpaint/continue/hybrid: after `prepare`
    finish: Callable[[JobResult], JobResult] | None = None  # splices a prepared job's result into its source
    source: tuple[np.ndarray, int] | None = None  # inpaint/continue: audio [C, N] and its rate
    mode: str = "plain"  # plain | hybrid | long | endless ("rescored" is plain with rescore_weight > 0)
    merge: Callable[[list[JobResult]], JobResult] | None = None  # several jobs (hybrid variations) -> one
    step: Callable[[JobResult], Job | None] | None = None  # inpaint/continue: records a window, gives the next
    windows: int = 1  # inpaint/continue: windows of the model's segment this request decodes
    region: tuple[float, float] | None = None  # inpaint: [start, end) in seconds
    prompt: WindowPrompt | None = None  # long / endless
    duration_s: float | None = None  # long: the total
    overlap_s: float = DEFAULT_OVERLAP_S

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None

    @property
    def streaming(self) -> bool:
        return self.mode in STREAMING


def _invalid(rid: str, field: str, why: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> ProtocolError:
    return ProtocolError(code, f"{field}: {why}", request_id=rid, details={"field": field})


def offered_presets(rescorer) -> list[str]:
    """Preset names a daemon offers: those that rescore only when it has a rescorer (PROTOCOL.md §6)."""
    return [n for n in preset_names() if rescorer is not None or resolve_params(n).rescore_weight == 0]


def engine_overrides(params: Any) -> dict[str, Any]:
    """Protocol DecodeParams -> the engine's overrides (same names and meanings; nil = the preset's)."""
    return {k: v for k, v in params.to_dict().items() if v is not None}


def admit(msg: Render, pipe, files: PathPolicy) -> RenderPlan:
    """Validate a render request against the resident model; raises ProtocolError (its id set)."""
    rid = msg.id
    rescorer = getattr(pipe, "rescorer", None)
    overrides = engine_overrides(msg.params)
    if msg.rescore is not None:
        overrides["rescore_weight"] = msg.rescore
    offered = offered_presets(rescorer)
    if msg.preset not in offered:
        why = ("rescores, and this daemon has no rescoring model (start it with --rescorer)"
               if msg.preset in preset_names() else "is not a preset of this daemon")
        raise ProtocolError(ErrorCode.UNKNOWN_PRESET, f"preset {msg.preset!r} {why}; its presets: "
                            f"{', '.join(offered)}", request_id=rid, details={"preset": msg.preset})
    try:
        params = resolve_params(msg.preset, overrides)
        params.check_stages(pipe.lm.n_q)
    except Exception as exc:  # noqa: BLE001 - the error table maps it (UnknownPreset, InvalidParams)
        raise to_protocol_error(exc, rid, field="params", preset=msg.preset) from None
    if params.rescore_weight > 0 and rescorer is None:
        raise _invalid(rid, "rescore", "this daemon has no rescoring model (start it with --rescorer)",
                       ErrorCode.RESCORER_UNAVAILABLE)
    if msg.seed is not None and msg.seed >= MAX_ENGINE_SEED:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"seed: must be below 2^63 - 1024, got {msg.seed}",
                            request_id=rid, details={"field": "seed"})
    seed = secrets.randbits(PICKED_SEED_BITS) if msg.seed is None else msg.seed
    segment = float(pipe.segment_duration)
    if isinstance(msg, Generate):
        return _admit_generate(msg, pipe, params, seed, segment)
    audio, sr = _source(msg, MAX_SOURCE_S, files)
    plan = RenderPlan(msg, params, seed, msg.outputs, source=(audio, sr))
    if isinstance(msg, Inpaint):
        plan.region = _region(msg, audio.shape[-1] / sr, sr)
    return plan


def _region(msg: Inpaint, clip_s: float, sr: int) -> tuple[float, float]:
    """The region in seconds (from bars: edges on whole samples at the source's rate), inside the clip."""
    start, end = msg.region_s(sr)
    bars = msg.start_bar is not None
    if end > clip_s + 1e-9:
        where = f"bar {msg.end_bar:g} ends at {end:.6g} s" if bars else "end_s lies"
        raise ProtocolError(ErrorCode.INVALID_REGION, f"{'end_bar' if bars else 'end_s'}: {where} beyond the end "
                            f"of the clip ({clip_s:g} s)", request_id=msg.id,
                            details={"field": "end_bar" if bars else "end_s"})
    if end - start < MIN_REGION_S - 1e-9:
        raise ProtocolError(ErrorCode.INVALID_REGION, f"end_bar: the region is {end - start:.4f} s; it must be at "
                            f"least {MIN_REGION_S} s long", request_id=msg.id, details={"field": "end_bar"})
    return start, end


def _admit_generate(msg: Generate, pipe, params: DecodeParams, seed: int, segment: float) -> RenderPlan:
    rid, duration = msg.id, msg.duration_s
    mode = ("endless" if msg.endless else "long" if duration is not None and duration > segment + 1e-9
            else "hybrid" if msg.hybrid_s is not None else "plain")
    if mode in STREAMING:
        what = "an endless" if mode == "endless" else "a long-form"
        if msg.hybrid_s is not None:
            raise _invalid(rid, "hybrid_s", f"{what} request cannot be hybrid (hybrid_s needs duration_s <= "
                                            f"{segment:g} s)")
        if msg.outputs != 1:
            raise _invalid(rid, "variations" if msg.variations > 1 else "prompts",
                           f"{what} request renders one output (one prompt, variations 1)")
        if msg.loudness is not None:
            raise _invalid(rid, "loudness", f"{what} request streams window by window and is not normalised")
        if mode == "long" and duration > MAX_LONG_DURATION_S:
            raise _invalid(rid, "duration_s", f"at most {MAX_LONG_DURATION_S:g} s")
        fr, span, window = pipe.frame_rate, pipe.lm.cfg.span_len, pipe.frames_for(None)
        overlap = DEFAULT_OVERLAP_S if msg.overlap_s is None else msg.overlap_s
        if not span <= round(overlap * fr) <= window - span:
            raise _invalid(rid, "overlap_s", f"must be in [{span / fr:g}, {(window - span) / fr:g}] s for this "
                                             f"model's {segment:g} s windows, got {overlap:g}")
        return RenderPlan(msg, params, seed, 1, mode=mode, prompt=WindowPrompt(msg.all_prompts[0]),
                          duration_s=None if mode == "endless" else duration, overlap_s=overlap)
    frames = pipe.frames_for(duration)
    if mode == "hybrid":
        if getattr(pipe, "rescorer", None) is None:
            raise _invalid(rid, "hybrid_s", "hybrid decoding needs the daemon's MusicGen (start it with "
                                            "--rescorer)", ErrorCode.RESCORER_UNAVAILABLE)
        if len(msg.all_prompts) != 1:
            raise _invalid(rid, "prompts", "a hybrid request takes one prompt")
        if not 1 <= round(msg.hybrid_s * pipe.frame_rate) < frames:
            raise _invalid(rid, "hybrid_s", f"must be at least one frame and shorter than the output "
                                            f"({frames / pipe.frame_rate:g} s), got {msg.hybrid_s:g}")
        return RenderPlan(msg, params, seed, msg.outputs, mode="hybrid")
    job = Job(list(msg.all_prompts), frames, params, seed, msg.variations)
    return RenderPlan(msg, params, seed, msg.outputs, jobs=[job])


def _source(msg: Inpaint | Continue, segment: float, files: PathPolicy) -> tuple[np.ndarray, int]:
    src = msg.source
    if src.audio is not None and src.audio.duration_s > segment + 1e-9:  # refused before any copy is made
        raise ProtocolError(ErrorCode.INVALID_AUDIO, f"source.audio: the clip is {src.audio.duration_s:.2f} s "
                            f"long, and this model takes at most {segment:g} s", request_id=msg.id,
                            details={"field": "source.audio"})
    try:
        if src.path is not None:
            return files.read_audio(src.path, max_s=segment)
        return pcm_decode(src.audio.data, src.audio.format, src.audio.channels), src.audio.sample_rate
    except ProtocolError as exc:
        exc.request_id = msg.id
        if exc.code == ErrorCode.INVALID_AUDIO:
            exc.details.setdefault("field", "source.audio.data" if src.path is None else "source.path")
        raise


def prepare(plan: RenderPlan, pipe, cancelled: Callable[[], bool] | None = None) -> None:
    """Encode the source and build the pinned job, or run the hybrid request's autoregressive phase (worker
    thread; `cancelled` is polled between AR steps). Raises engine errors (InvalidRegion, Cancelled...)."""
    if plan.jobs is not None or plan.streaming:
        return
    msg = plan.msg
    if plan.mode == "hybrid":
        from magnet_rt.hybrid import prepare_hybrid

        prep = prepare_hybrid(pipe, pipe.rescorer, msg.all_prompts[0], msg.duration_s, msg.hybrid_s, plan.params,
                              plan.seed, msg.variations, cancelled=cancelled)
        plan.jobs, plan.merge = prep.jobs, prep.finish_all
        return
    audio, sr = plan.source
    if isinstance(msg, Inpaint):
        prep = pipe.prepare_inpaint(audio, sr, *plan.region, msg.prompt, plan.params, plan.seed, msg.variations)
    else:
        duration = msg.duration_s if msg.duration_s is not None else float(pipe.segment_duration)
        prep = pipe.prepare_continue(audio, sr, msg.prompt, duration, plan.params, plan.seed, msg.variations)
    plan.jobs, plan.finish, plan.source = [prep.job], prep.finish, None
    plan.step, plan.windows = prep.step, prep.windows


def chunks(audio: np.ndarray, sample_rate: int, chunk_s: float, fmt: str) -> Iterator[tuple[int, float, bool, bytes]]:
    """One output [C, N] -> (seq, start_s, last, interleaved PCM) chunks of at most `chunk_s` seconds."""
    n = max(1, round(chunk_s * sample_rate))
    total = audio.shape[-1]
    count = max(1, math.ceil(total / n))
    for seq in range(count):
        a = seq * n
        yield seq, a / sample_rate, seq == count - 1, pcm_encode(audio[:, a:min(total, a + n)], fmt)
