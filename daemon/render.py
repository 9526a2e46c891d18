"""Render requests (generate, inpaint, continue): admission on the socket thread, preparation on the worker,
and the wire form of the results (chunked PCM).

`admit` runs every check that needs no engine work, so a bad request gets its error before `accepted`:
preset and parameters, seed, duration, the source audio (decoded, or read through the path policy) and
its region. `prepare` then encodes the source on the worker thread (inpaint, continue); a generate job
is ready at admission.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from magnet_rt.params import DecodeParams
from magnet_rt.pipeline import Job, JobResult
from magnet_rt.presets import resolve_params
from protocol import (
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


@dataclass
class RenderPlan:
    msg: Render
    params: DecodeParams
    seed: int
    outputs: int
    job: Job | None = None  # generate: at admission; inpaint/continue: after `prepare`
    finish: Callable[[JobResult], JobResult] | None = None  # splices a prepared job's result into its source
    source: tuple[np.ndarray, int] | None = None  # inpaint/continue: audio [C, N] and its rate

    @property
    def loudness(self) -> float | None:
        return getattr(self.msg, "loudness", None)


def engine_overrides(params: Any) -> dict[str, Any]:
    """Protocol DecodeParams -> the engine's overrides (same names and meanings; nil = the preset's)."""
    return {k: v for k, v in params.to_dict().items() if v is not None}


def admit(msg: Render, pipe, files: PathPolicy) -> RenderPlan:
    """Validate a render request against the resident model; raises ProtocolError (its id set)."""
    rid = msg.id
    try:
        params = resolve_params(msg.preset, engine_overrides(msg.params))
        params.check_stages(pipe.lm.n_q)
    except Exception as exc:  # noqa: BLE001 - the error table maps it (UnknownPreset, InvalidParams)
        raise to_protocol_error(exc, rid, field="params", preset=msg.preset) from None
    if msg.seed is not None and msg.seed >= MAX_ENGINE_SEED:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"seed: must be below 2^63 - 1024, got {msg.seed}",
                            request_id=rid, details={"field": "seed"})
    seed = secrets.randbits(62) if msg.seed is None else msg.seed
    segment = float(pipe.segment_duration)
    duration = getattr(msg, "duration_s", None)
    if duration is not None and duration > segment + 1e-9:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"duration_s: this model renders at most {segment:g} s",
                            request_id=rid, details={"field": "duration_s"})
    if isinstance(msg, Generate):
        job = Job(list(msg.all_prompts), pipe.frames_for(duration), params, seed, msg.variations)
        return RenderPlan(msg, params, seed, msg.outputs, job=job)
    audio, sr = _source(msg, segment, files)
    clip_s = audio.shape[-1] / sr
    if isinstance(msg, Inpaint) and msg.end_s > clip_s + 1e-9:
        raise ProtocolError(ErrorCode.INVALID_REGION, f"end_s: lies beyond the end of the clip ({clip_s:g} s)",
                            request_id=rid, details={"field": "end_s"})
    if isinstance(msg, Continue) and (duration or segment) - clip_s < MIN_REGION_S - 1e-9:
        raise ProtocolError(ErrorCode.INVALID_REGION, f"duration_s: must exceed the source ({clip_s:g} s) by at "
                            f"least {MIN_REGION_S} s", request_id=rid, details={"field": "duration_s"})
    return RenderPlan(msg, params, seed, msg.outputs, source=(audio, sr))


def _source(msg: Inpaint | Continue, segment: float, files: PathPolicy) -> tuple[np.ndarray, int]:
    src = msg.source
    try:
        if src.path is not None:
            return files.read_audio(src.path, max_s=segment)
        audio = pcm_decode(src.audio.data, src.audio.format, src.audio.channels)
    except ProtocolError as exc:
        exc.request_id = msg.id
        if exc.code == ErrorCode.INVALID_AUDIO:
            exc.details.setdefault("field", "source.audio.data" if src.path is None else "source.path")
        raise
    clip_s = audio.shape[-1] / src.audio.sample_rate
    if clip_s > segment + 1e-9:
        raise ProtocolError(ErrorCode.INVALID_AUDIO, f"source.audio: {clip_s:.2f} s is longer than this model's "
                            f"{segment:g} s segment", request_id=msg.id, details={"field": "source.audio"})
    return audio, src.audio.sample_rate


def prepare(plan: RenderPlan, pipe) -> None:
    """Encode the source and build the pinned job (worker thread). Raises engine errors (InvalidRegion...)."""
    if plan.job is not None:
        return
    msg, (audio, sr) = plan.msg, plan.source
    if isinstance(msg, Inpaint):
        prep = pipe.prepare_inpaint(audio, sr, msg.start_s, msg.end_s, msg.prompt, plan.params, plan.seed,
                                    msg.variations)
    else:
        duration = msg.duration_s if msg.duration_s is not None else float(pipe.segment_duration)
        prep = pipe.prepare_continue(audio, sr, msg.prompt, duration, plan.params, plan.seed, msg.variations)
    plan.job, plan.finish, plan.source = prep.job, prep.finish, None


def chunks(audio: np.ndarray, sample_rate: int, chunk_s: float, fmt: str) -> Iterator[tuple[int, float, bool, bytes]]:
    """One output [C, N] -> (seq, start_s, last, interleaved PCM) chunks of at most `chunk_s` seconds."""
    n = max(1, round(chunk_s * sample_rate))
    total = audio.shape[-1]
    count = max(1, math.ceil(total / n))
    for seq in range(count):
        a = seq * n
        yield seq, a / sample_rate, seq == count - 1, pcm_encode(audio[:, a:min(total, a + n)], fmt)
