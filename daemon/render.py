"""Render requests (generate, inpaint, continue): admission on the socket thread, the plan the worker runs,
and the wire form of the results (chunked PCM).

`admit` runs every check that needs no engine work, so a bad request gets its error before `accepted`:
preset and parameters, duration, hybrid/long-form/endless options, the source audio (decoded, or read
through the path policy) and its region; it picks the seed when the request has none. It returns one plan
type per way a request runs:
- `TakePlan`: a generate of at most one segment (plain or rescored), its job ready at admission;
- `HybridPlan`: MusicGen writes the first seconds in `prepare` (worker thread), then MAGNeT completes them;
- `SourcePlan`: inpaint/continue, the source encoded in `prepare`, window by window for long regions;
- `StreamPlan`: long-form and endless, never batched, run window by window (magnet_rt.longform) with its
  prompt read from a `WindowPrompt` that `set_prompt` may change.
The batched three share `BatchPlan`'s steps: `prepare`, `combine` (the jobs' results as one), `next_job`
(the next window) and `finish` (the takes the client gets).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from magnet_rt import longform
from magnet_rt.audio import DEFAULT_LOUDNESS_LUFS, finish_takes
from magnet_rt.errors import InvalidParams
from magnet_rt.jobs import Job, JobResult, Pipeline
from magnet_rt.longform import DEFAULT_OVERLAP_S, Chunk, PromptHolder
from magnet_rt.params import DecodeParams
from magnet_rt.presets import preset_names, resolve_params
from magnet_rt.tempo import prompt_bpm
from protocol import (
    MAX_LONG_DURATION_S,
    MAX_SOURCE_S,
    MIN_REGION_S,
    PICKED_SEED_BITS,
    PROMPT_BPM_RANGE,
    AudioChunk,
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

if TYPE_CHECKING:
    from magnet_rt.decoding import StepEvent

class WindowPrompt(PromptHolder):
    """The prompt of a long-form or endless request (the engine's `PromptHolder`) that also counts its reads:
    read by the engine once per window (worker thread), set by `set_prompt` (socket thread), whose reply
    names the first window that will read the new prompt."""

    def __init__(self, prompt: str | None):
        super().__init__(prompt)
        self._reads = 0

    def get(self) -> str | None:
        with self._lock:
            self._reads += 1
            return self._prompt

    __call__ = get

    def set(self, prompt: str | None) -> int:
        with self._lock:
            self._prompt = prompt
            return self._reads


@dataclass(eq=False, kw_only=True)
class Plan:
    """What admission decided for one render request: the worker runs it. One type per way it runs."""

    msg: Render
    params: DecodeParams
    seed: int
    outputs: int
    window: int = 0  # the window of the model's segment being decoded (progress, status)


@dataclass(eq=False, kw_only=True)
class BatchPlan(Plan):
    """A request decoded in the engine's batches: its jobs (one, or one per hybrid variation) run beside the
    jobs of other requests with the same batch key."""

    jobs: list[Job] | None = None  # None until `prepare` has run
    windows: int = 1  # windows of the model's segment it decodes, one batch each

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None

    def prepare(self, pipe: Pipeline, cancelled: Callable[[], bool] | None = None) -> None:
        """The engine work before its jobs exist (worker thread); raises the engine's typed errors."""

    def combine(self, results: list[JobResult]) -> JobResult:
        """The results of its jobs (in order) as one."""
        return results[0]

    def next_job(self, res: JobResult) -> Job | None:
        """After a window: the job of the next one (None: that was the last)."""
        return None

    def finish(self, res: JobResult) -> JobResult:
        """The last window's result -> the takes the client gets."""
        return res


@dataclass(eq=False, kw_only=True)
class TakePlan(BatchPlan):
    """A generate of at most one segment (plain or rescored): its job is built at admission. Every take
    leaves with DC removed, fades and the request's loudness (magnet_rt.audio.finish_takes)."""

    def finish(self, res: JobResult) -> JobResult:
        msg = self.msg
        target = None if not msg.normalize else DEFAULT_LOUDNESS_LUFS if msg.loudness is None else msg.loudness
        return replace(res, audio=finish_takes(res.audio, res.sample_rate, target))


@dataclass(eq=False, kw_only=True)
class HybridPlan(TakePlan):
    """A generate whose first `hybrid_s` seconds MusicGen writes (in `prepare`); MAGNeT completes each
    variation with them pinned, one job per variation."""

    merge: Callable[[list[JobResult]], JobResult] | None = None

    def prepare(self, pipe: Pipeline, cancelled: Callable[[], bool] | None = None) -> None:
        from magnet_rt.hybrid import prepare_hybrid

        msg = self.msg
        prep = prepare_hybrid(pipe, pipe.rescorer, msg.all_prompts[0], msg.duration_s, msg.hybrid_s, self.params,
                              self.seed, msg.variations, cancelled=cancelled)
        self.jobs, self.merge = prep.jobs, prep.finish_all

    def combine(self, results: list[JobResult]) -> JobResult:
        return self.merge(results)


@dataclass(eq=False, kw_only=True)
class SourcePlan(BatchPlan):
    """An inpaint or continue: `prepare` encodes the source (window by window for long regions); the
    result is spliced into it, the source's samples untouched."""

    source: tuple[np.ndarray, int] | None  # audio [C, N] and its rate, until `prepare`
    region: tuple[float, float] | None = None  # inpaint: [start, end) in seconds
    splice: Callable[[JobResult], JobResult] | None = None
    step: Callable[[JobResult], Job | None] | None = None

    def prepare(self, pipe: Pipeline, cancelled: Callable[[], bool] | None = None) -> None:
        msg, (audio, sr) = self.msg, self.source
        if isinstance(msg, Inpaint):
            prep = pipe.prepare_inpaint(audio, sr, *self.region, msg.prompt, self.params, self.seed, msg.variations,
                                        downbeat_s=msg.downbeat_s)
        else:
            duration = msg.duration_s if msg.duration_s is not None else float(pipe.segment_duration)
            prep = pipe.prepare_continue(audio, sr, msg.prompt, duration, self.params, self.seed, msg.variations)
        self.jobs, self.splice, self.source = [prep.job], prep.finish, None
        self.step, self.windows = prep.step, prep.windows

    def next_job(self, res: JobResult) -> Job | None:
        return self.step(res) if self.step is not None else None

    def finish(self, res: JobResult) -> JobResult:
        return self.splice(res)


@dataclass(eq=False, kw_only=True)
class StreamPlan(Plan):
    """A long-form (`duration_s`) or endless (`duration_s` None) generate: never batched, decoded window by
    window (magnet_rt.longform) between other work, its prompt read from `prompt` before each window."""

    prompt: WindowPrompt
    duration_s: float | None
    overlap_s: float

    @property
    def endless(self) -> bool:
        return self.duration_s is None

    @property
    def wire_mode(self) -> str:
        """What `queue_entry.mode` calls it."""
        return "endless" if self.endless else "long"

    def chunks(self, pipe: Pipeline, on_step: Callable[[int, StepEvent], None],
               is_cancelled: Callable[[], bool]) -> Iterator[Chunk]:
        kw = dict(overlap_s=self.overlap_s, is_cancelled=is_cancelled, on_step=on_step)
        if self.endless:
            return longform.endless(pipe, self.prompt, self.params, self.seed, **kw)
        return longform.stream_long(pipe, self.prompt, self.duration_s, self.params, self.seed, **kw)


def _invalid(rid: str, field: str, why: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> ProtocolError:
    return ProtocolError(code, f"{field}: {why}", request_id=rid, details={"field": field})


def check_prompt_tempo(rid: str, prompts: tuple[str | None, ...] | list[str | None], field: str = "prompts") -> None:
    """A tempo named in a prompt ("N bpm") must lie in PROMPT_BPM_RANGE: a model with a beat grid plays it
    (magnet_rt/tempo.py); refused for every model, so a typo never depends on which model is resident."""
    lo, hi = PROMPT_BPM_RANGE
    for p in prompts:
        try:
            bpm = prompt_bpm(p)
        except InvalidParams as exc:
            raise _invalid(rid, field, str(exc)) from None
        if bpm is not None and not lo <= bpm <= hi:
            raise _invalid(rid, field, f"the tempo {bpm:g} bpm is outside {lo:g}..{hi:g} bpm")


def offered_presets(rescorer) -> list[str]:
    """Preset names a daemon offers: those that rescore only when it has a rescorer (PROTOCOL.md §6)."""
    return [n for n in preset_names() if rescorer is not None or resolve_params(n).rescore_weight == 0]


def engine_overrides(params: Any) -> dict[str, Any]:
    """Protocol DecodeParams -> the engine's overrides (same names and meanings; nil = the preset's)."""
    return {k: v for k, v in params.to_dict().items() if v is not None}


def admit(msg: Render, pipe: Pipeline, files: PathPolicy) -> TakePlan | HybridPlan | SourcePlan | StreamPlan:
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
        params = resolve_params(msg.preset, overrides, pipe.decoding)
        params.check_stages(pipe.lm.n_q)
    except Exception as exc:  # noqa: BLE001 - the error table maps it (UnknownPreset, InvalidParams)
        raise to_protocol_error(exc, rid, field="params", preset=msg.preset) from None
    if params.rescore_weight > 0 and rescorer is None:
        raise _invalid(rid, "rescore", "this daemon has no rescoring model (start it with --rescorer)",
                       ErrorCode.RESCORER_UNAVAILABLE)
    check_prompt_tempo(rid, msg.all_prompts if isinstance(msg, Generate) else (msg.prompt,),
                       "prompts" if isinstance(msg, Generate) and msg.prompts is not None else "prompt")
    seed = secrets.randbits(PICKED_SEED_BITS) if msg.seed is None else msg.seed  # the wire bounds a sent one
    segment = float(pipe.segment_duration)
    if isinstance(msg, Generate):
        return _admit_generate(msg, pipe, params, seed, segment)
    audio, sr = _source(msg, MAX_SOURCE_S, files)
    region = _region(msg, audio.shape[-1] / sr, sr) if isinstance(msg, Inpaint) else None
    return SourcePlan(msg=msg, params=params, seed=seed, outputs=msg.outputs, source=(audio, sr), region=region)


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


def _admit_generate(msg: Generate, pipe: Pipeline, params: DecodeParams, seed: int,
                    segment: float) -> TakePlan | HybridPlan | StreamPlan:
    if msg.endless or (msg.duration_s is not None and msg.duration_s > segment + 1e-9):
        return _admit_stream(msg, pipe, params, seed, segment)
    frames = pipe.frames_for(msg.duration_s)
    plan = dict(msg=msg, params=params, seed=seed, outputs=msg.outputs)
    if msg.hybrid_s is None:
        return TakePlan(**plan, jobs=[Job(list(msg.all_prompts), frames, params, seed, msg.variations)])
    rid = msg.id
    if getattr(pipe, "rescorer", None) is None:
        raise _invalid(rid, "hybrid_s", "hybrid decoding needs the daemon's MusicGen (start it with --rescorer)",
                       ErrorCode.RESCORER_UNAVAILABLE)
    if len(msg.all_prompts) != 1:
        raise _invalid(rid, "prompts", "a hybrid request takes one prompt")
    if not 1 <= round(msg.hybrid_s * pipe.frame_rate) < frames:
        raise _invalid(rid, "hybrid_s", f"must be at least one frame and shorter than the output "
                                        f"({frames / pipe.frame_rate:g} s), got {msg.hybrid_s:g}")
    return HybridPlan(**plan)


def _admit_stream(msg: Generate, pipe: Pipeline, params: DecodeParams, seed: int, segment: float) -> StreamPlan:
    rid, duration = msg.id, None if msg.endless else msg.duration_s
    what = "an endless" if duration is None else "a long-form"
    if msg.hybrid_s is not None:
        raise _invalid(rid, "hybrid_s", f"{what} request cannot be hybrid (hybrid_s needs duration_s <= "
                                        f"{segment:g} s)")
    if msg.outputs != 1:
        raise _invalid(rid, "variations" if msg.variations > 1 else "prompts",
                       f"{what} request renders one output (one prompt, variations 1)")
    if msg.loudness is not None:
        raise _invalid(rid, "loudness", f"{what} request streams window by window and is not normalised")
    if duration is not None and duration > MAX_LONG_DURATION_S:
        raise _invalid(rid, "duration_s", f"at most {MAX_LONG_DURATION_S:g} s")
    fr, span, window = pipe.frame_rate, pipe.lm.cfg.span_len, pipe.frames_for(None)
    overlap = DEFAULT_OVERLAP_S if msg.overlap_s is None else msg.overlap_s
    if not span <= round(overlap * fr) <= window - span:
        raise _invalid(rid, "overlap_s", f"must be in [{span / fr:g}, {(window - span) / fr:g}] s for this "
                                         f"model's {segment:g} s windows, got {overlap:g}")
    return StreamPlan(msg=msg, params=params, seed=seed, outputs=1, prompt=WindowPrompt(msg.all_prompts[0]),
                      duration_s=duration, overlap_s=overlap)


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


def chunks(audio: np.ndarray, sample_rate: int, chunk_s: float, fmt: str) -> Iterator[tuple[int, float, bool, bytes]]:
    """One output [C, N] -> (seq, start_s, last, interleaved PCM) chunks of at most `chunk_s` seconds."""
    n = max(1, round(chunk_s * sample_rate))
    total = audio.shape[-1]
    count = max(1, math.ceil(total / n))
    for seq in range(count):
        a = seq * n
        yield seq, a / sample_rate, seq == count - 1, pcm_encode(audio[:, a:min(total, a + n)], fmt)


def audio_messages(rid: str, msg: Render, audio: np.ndarray, sample_rate: int, *, variation: int = 0,
                   first_seq: int = 0, start_s: float = 0.0, final: bool = True, kind: type[AudioChunk] = AudioChunk,
                   **extra: Any) -> list[AudioChunk]:
    """One output [C, N] as `audio` (or `preview`) messages of at most the request's `chunk_s` seconds, in its
    format, numbered from `first_seq` and placed from `start_s`; `final` False: more of this output follows
    (the next window of a stream), so none of these is its `last`."""
    return [kind(id=rid, data=data, format=msg.format, sample_rate=sample_rate, channels=audio.shape[0],
                 variation=variation, seq=first_seq + seq, last=last and final, start_s=start_s + start, **extra)
            for seq, start, last, data in chunks(audio, sample_rate, msg.chunk_s, msg.format)]
