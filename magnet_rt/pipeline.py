"""Prompts -> audio: text encoder -> LM decoding -> codec, plus inpainting and continuation.

`run_batch` is the one engine entry point: a list of `Job`s that share (frames, params) decoded in
one batch, each with its own seeds, progress and cancellation (the daemon's micro-batching).
`generate`, `inpaint` and `continue_from` build one `Job` and call it.

Inpainting and continuation pin every (codebook, frame) outside the new region to the source's codes
(`magnet_rt.regions` places the windows, for sources up to 10 minutes) and splice the decoded region into
the *original* waveform (its sample rate and channels), with short equal-power crossfades inside the new
region, so the kept audio is the input sample for sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from . import audio as audio_ops
from .checkpoints import load_audiocraft_lm, resolve_file
from .codec import Codec
from .conditioning import T5TextEncoder, TextEncoder
from .decoding import DecodePath, RowGroup, StepEvent, decode
from .devices import Stopwatch, codec_device, codec_half, lm_dtype, pick_device
from .encodec_checkpoints import load_audiocraft_codec
from .errors import DecodeCancelled, InvalidParams
from .graphs import StepGraphs, check_step_graphs, use_static
from .interfaces import BindableRescorer, Rescorer
from .jobs import Job, JobResult, Prepared
from .lm import MagnetLM
from .params import DecodeParams, pick_seed
from .presets import ModelDecoding
from .regions import prepare_continue, prepare_inpaint
from .tempo import beat_grids
from .tonality import key_vectors

if TYPE_CHECKING:
    from .spectral_codec import SpectralCodec

log = logging.getLogger(__name__)

DEFAULT_FADE_S = 0.010  # crossfade length at splice points


@dataclass(frozen=True)
class PipelineOptions:
    """How a pipeline decodes, fixed when it is built (every choice gives the same codes).

    `step_graphs`: static decode steps (CUDA graphs): auto (where measured faster: CUDA), on, off.
    `reference`: decode with the release's own computation (all heads, dense attention, every position
    sampled) instead of the fastest equivalent form: the parity baseline, for tests and benchmarks."""

    step_graphs: str = "auto"
    reference: bool = False

    def __post_init__(self) -> None:
        check_step_graphs(self.step_graphs)


class MagnetPipeline:
    """Implements `jobs.Pipeline`. `rescorer` (an `interfaces.Rescorer`, used when a job's
    params.rescore_weight > 0) is the one thing attached after construction: the daemon loads the
    rescorer once and hands it to every compatible model.

    `decoding`: the model's own decoding choices (`presets.ModelDecoding`, a bundle's `decoding`; none for
    the released checkpoints); every caller resolves a preset with it (`resolve_params(.., pipe.decoding)`)."""

    def __init__(self, lm: MagnetLM, text_encoder: TextEncoder, codec: Codec | SpectralCodec, name: str = "",
                 options: PipelineOptions = PipelineOptions(), decoding: ModelDecoding | None = None):
        if codec.card != lm.card or codec.n_q != lm.n_q:
            raise InvalidParams(f"codec ({codec.n_q} x {codec.card}) does not match the LM ({lm.n_q} x {lm.card})")
        self.lm, self.text_encoder, self.codec, self.name = lm, text_encoder, codec, name
        self.options = options
        self.decoding = decoding or ModelDecoding()
        self.rescorer: Rescorer | None = None
        static = options.step_graphs == "on" or (options.step_graphs == "auto" and use_static(lm.device))
        self._graphs = StepGraphs(lm) if static and not options.reference else None

    def with_options(self, options: PipelineOptions) -> MagnetPipeline:
        """The same model (shared weights) decoding with other options."""
        other = MagnetPipeline(self.lm, self.text_encoder, self.codec, self.name, options, self.decoding)
        other.rescorer = self.rescorer
        return other

    @property
    def graphs(self) -> StepGraphs | None:
        """The static-step buckets this pipeline decodes with (`magnet_rt.graphs`), or None."""
        return self._graphs

    @property
    def path(self) -> DecodePath | None:
        """The decode path asked of `decoding.decode` (None: its measured choice per request)."""
        return DecodePath.REFERENCE if self.options.reference else None

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_audiocraft(cls, name_or_dir: str | Path, device: str | torch.device = "auto",
                        text_encoder: str | Path | None = None, options: PipelineOptions = PipelineOptions(),
                        name: str | None = None, **hub_kwargs) -> MagnetPipeline:
        """A released model (hub id, hub cache, or a directory with `state_dict.bin` and
        `compression_state_dict.bin`; a `text_encoder/` folder beside them overrides the T5 named
        in xp.cfg)."""
        device = pick_device(device)
        codec = load_audiocraft_codec(resolve_file(name_or_dir, "compression_state_dict.bin", **hub_kwargs),
                                      device=codec_device(device), half=codec_half(codec_device(device)))
        lm = load_audiocraft_lm(resolve_file(name_or_dir, "state_dict.bin", **hub_kwargs), device=device,
                                dtype=lm_dtype(device), frame_rate=codec.frame_rate)
        local_te = Path(name_or_dir) / "text_encoder"
        te_name = text_encoder or (local_te if local_te.is_dir() else lm.text_encoder_name)
        te = T5TextEncoder.from_pretrained(te_name, device=device)
        return cls(lm, te, codec, name=name or str(name_or_dir), options=options)

    # ---- facts --------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> int:
        return self.codec.frame_rate

    @property
    def segment_duration(self) -> float:
        return self.lm.cfg.segment_duration

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def frames_for(self, duration_s: float | None) -> int:
        d = self.segment_duration if duration_s is None else float(duration_s)
        if not (math.isfinite(d) and 0 < d <= self.segment_duration + 1e-9):
            raise InvalidParams(f"duration must be in (0, {self.segment_duration:g}] seconds for this model "
                                f"(its trained segment), got {duration_s}")
        return max(1, round(d * self.frame_rate))

    # ---- the batched entry point -----------------------------------------------------------------------
    @torch.inference_mode()
    def run_batch(self, jobs: list[Job], on_step: Callable[[int, StepEvent], None] | None = None,
                  is_cancelled: Callable[[int], bool] | None = None) -> list[JobResult | None]:
        """Decode compatible jobs in one batch. Returns a result per job, None for a cancelled one."""
        if not jobs:
            return []
        frames, params = jobs[0].batch_key()
        if any(j.batch_key() != (frames, params) for j in jobs):
            raise InvalidParams("jobs in one batch must share frames and decoding parameters")
        clock = Stopwatch(self.device)  # CUDA events on a GPU: no sync until the end
        row_job = [ji for ji, j in enumerate(jobs) for _ in range(j.rows)]
        prompts = [p for j in jobs for p in j.prompts for _ in range(j.variations)]
        text = self.text_encoder.encode(prompts)
        cond = self.lm.project_text(text.hidden.to(self.device), text.mask.to(self.device))
        # Each row attends to its own text length ("" is one EOS token), as if decoded alone: the
        # release pads to the longest prompt in the batch, which makes a take depend on its batch mates.
        cross_len = text.mask.sum(-1).clamp(min=1).to(self.device)
        beat = None
        if self.lm.beat_proj is not None:  # the tempo each prompt names, on each job's stretch of its grid
            beat = beat_grids(prompts, frames, [jobs[ji].first_frame for ji in row_job], self.frame_rate)
        key = key_vectors(prompts) if self.lm.key_proj is not None else None  # the key each prompt names
        fixed, init = self._pinned(jobs, row_job, frames)
        clock.mark("text")
        job_rows = [[r for r, jj in enumerate(row_job) if jj == ji] for ji in range(len(jobs))]

        def step(ev: StepEvent) -> None:
            if ev.stage_step == ev.stage_steps:
                clock.mark(f"stage{ev.stage}")
            if on_step is None:
                return
            for ji, rows in enumerate(job_rows):
                if is_cancelled is not None and is_cancelled(ji):
                    continue
                codes = torch.cat([ev.codes[r] for r in rows]) if ev.codes is not None else None
                on_step(ji, StepEvent(ev.step, ev.total_steps, ev.stage, ev.stage_step, ev.stage_steps, codes))

        cancelled = (lambda gi: is_cancelled(row_job[gi])) if is_cancelled is not None else None
        rescorer = self.rescorer
        if params.rescore_weight > 0 and isinstance(rescorer, BindableRescorer):
            rescorer = rescorer.bind(text.hidden, text.mask)  # condition the rescorer on each row's text
        out = decode(self.lm, cond, frames, params, self._row_groups(jobs), fixed=fixed, init_codes=init,
                     cross_len=cross_len, beat=beat, key=key, on_step=step, is_cancelled=cancelled, rescorer=rescorer,
                     path=self.path, graphs=self.graphs)
        clock.mark("decode_tail")
        alive = [ji for ji, rows in enumerate(job_rows) if all(out[r] is not None for r in rows)]
        codes_by_job = {ji: torch.cat([out[r] for r in job_rows[ji]]) for ji in alive}
        audio_by_job = self._audio(jobs, codes_by_job, frames)
        clock.mark("codec")
        timings = _timings(clock)
        return [JobResult(codes_by_job[ji].cpu(), audio_by_job[ji], self.sample_rate, jobs[ji].row_seeds(),
                          dict(timings), batch_size=len(jobs)) if ji in codes_by_job else None
                for ji in range(len(jobs))]

    def _row_groups(self, jobs: list[Job]) -> list[RowGroup]:
        """One row group per take, each with its own generator seeded with the take's seed."""
        groups = []
        for j in jobs:
            for s in j.row_seeds():
                g = torch.Generator(device=self.device)
                g.manual_seed(s)
                groups.append(RowGroup(1, g))
        return groups

    def _pinned(self, jobs: list[Job], row_job: list[int], frames: int) -> tuple[Tensor | None, Tensor | None]:
        """(fixed, init_codes) [rows, K, frames] of the batch, or (None, None) when nothing is pinned."""
        if all(j.fixed is None for j in jobs):
            return None, None
        K = self.lm.n_q
        fixed = torch.zeros(len(row_job), K, frames, dtype=torch.bool)
        init = torch.full((len(row_job), K, frames), self.lm.card, dtype=torch.long)
        for r, ji in enumerate(row_job):
            if jobs[ji].fixed is not None:
                fixed[r], init[r] = jobs[ji].pinned(r - row_job.index(ji))
        return fixed, init

    def _audio(self, jobs: list[Job], codes_by_job: dict[int, Tensor], frames: int) -> dict[int, np.ndarray]:
        """Every finished job's codes through the codec in one call -> audio [rows, C, samples] per job."""
        if not codes_by_job:
            return {}
        wav = self.codec.decode(torch.cat(list(codes_by_job.values()))).float().cpu().numpy()
        wav = wav[..., :round(frames / self.frame_rate * self.sample_rate)]
        out, start = {}, 0
        for ji in codes_by_job:
            out[ji] = wav[start:start + jobs[ji].rows]
            start += jobs[ji].rows
        return out

    def _run_one(self, job: Job, progress, cancelled) -> JobResult:
        res = self.run_batch([job], on_step=(lambda _, ev: progress(ev)) if progress else None,
                             is_cancelled=(lambda _: cancelled()) if cancelled else None)[0]
        if res is None:
            raise DecodeCancelled("generation cancelled")
        return res

    # ---- user-facing operations ------------------------------------------------------------------------
    def generate(self, prompts: str | list[str | None] | None, duration_s: float | None = None,
                 params: DecodeParams | None = None, seed: int | None = None, variations: int = 1,
                 progress: Callable[[StepEvent], None] | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 loudness: float | None = audio_ops.DEFAULT_LOUDNESS_LUFS) -> JobResult:
        """Text -> music: rows are prompt-major (prompt 0's variations first). Each take is finished as the
        daemon finishes it (`audio.finish_take`: DC removed, 5 ms fades, `loudness` LUFS; None: the model's
        level); `codes` are the model's."""
        prompts = [prompts] if prompts is None or isinstance(prompts, str) else list(prompts)
        params = params or self.decoding.default_params
        job = Job(prompts, self.frames_for(duration_s), params, pick_seed(seed), variations)
        res = self._run_one(job, progress, cancelled)
        res.audio = audio_ops.finish_takes(res.audio, res.sample_rate, loudness)
        return res

    def inpaint(self, audio, sample_rate: int, start_s: float, end_s: float, prompt: str | None,
                params: DecodeParams | None = None, seed: int | None = None, variations: int = 1,
                progress=None, cancelled=None, fade_s: float = DEFAULT_FADE_S, downbeat_s: float = 0.0) -> JobResult:
        """Regenerate [start_s, end_s) of `audio` ([N] or [C, N], up to 10 minutes); everything outside is kept
        exactly. Returns audio [variations, C, N] at the source's sample rate and channels. `downbeat_s`: see
        `prepare_inpaint`."""
        prepared = self.prepare_inpaint(audio, sample_rate, start_s, end_s, prompt, params, seed, variations, fade_s,
                                        downbeat_s)
        return self.run_prepared(prepared, progress, cancelled)

    def continue_from(self, audio, sample_rate: int, prompt: str | None, duration_s: float,
                      params: DecodeParams | None = None, seed: int | None = None, variations: int = 1,
                      progress=None, cancelled=None, fade_s: float = DEFAULT_FADE_S) -> JobResult:
        """Append `duration_s` new seconds (any length, window by window beyond one segment) to `audio`,
        conditioned on its last seconds. The source is kept sample for sample; returns [variations, C, N + new]."""
        prepared = self.prepare_continue(audio, sample_rate, prompt, duration_s, params, seed, variations, fade_s)
        return self.run_prepared(prepared, progress, cancelled)

    # ---- inpaint / continue as (job, step, finish), so a scheduler can batch their windows ------------------
    def prepare_inpaint(self, audio, sample_rate: int, start_s: float, end_s: float, prompt: str | None,
                        params: DecodeParams | None = None, seed: int | None = None, variations: int = 1,
                        fade_s: float = DEFAULT_FADE_S, downbeat_s: float = 0.0) -> Prepared:
        """Validate and encode the source around the region; the jobs pin everything outside it
        (`magnet_rt.regions`: window placement for sources of any length). `downbeat_s`: the source's first
        downbeat, where a model with a beat grid starts counting the prompt's tempo."""
        return prepare_inpaint(self, audio, sample_rate, start_s, end_s, prompt, params, seed, variations, fade_s,
                               downbeat_s)

    def prepare_continue(self, audio, sample_rate: int, prompt: str | None, duration_s: float,
                         params: DecodeParams | None = None, seed: int | None = None, variations: int = 1,
                         fade_s: float = DEFAULT_FADE_S) -> Prepared:
        """Validate and encode the source's end; the jobs append `duration_s` seconds (`magnet_rt.regions`)."""
        return prepare_continue(self, audio, sample_rate, prompt, duration_s, params, seed, variations, fade_s)

    def run_prepared(self, prepared: Prepared, progress=None, cancelled=None) -> JobResult:
        """Every window of a prepared request in turn, then its finished audio."""
        res = self._run_one(prepared.job, progress, cancelled)
        while prepared.step is not None and (job := prepared.step(res)) is not None:
            res = self._run_one(job, progress, cancelled)
        return prepared.finish(res)


def _timings(clock: Stopwatch) -> dict[str, float]:
    """A batch's timings: text, each stage, decode (the stages and the tail), codec, total."""
    d = clock.durations()
    stage_t = {k: v for k, v in d.items() if k.startswith("stage")}
    return {"text": d["text"], **stage_t, "decode": sum(stage_t.values()) + d["decode_tail"],
            "codec": d["codec"], "total": d["total"]}
