"""Resident models: load (with a warm-up generation), unload, and ollama-style keep-alive.

With `rescorer` (a `magnet_rt.rescoring.load_rescorer` name) one MusicGen is loaded with the first model,
on its device, and set as `pipe.rescorer` of every compatible pipeline (same codebooks, cardinality and
text width); it serves rescoring and hybrid decoding. It must fit the default model, else startup fails.

`keep_alive_s`: negative = forever, 0 = unload as soon as idle, positive = seconds after the last use,
None = the daemon's `--keep-alive`. The default model never expires. Loading and unloading run on the
engine worker thread (they touch the device); the socket thread only reads facts and asks what expired.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from magnet_rt.errors import InvalidParams
from magnet_rt.jobs import Job, Pipeline
from magnet_rt.params import DecodeParams
from magnet_rt.presets import DEFAULT_PRESET, resolve_params
from magnet_rt.registry import TINY_RANDOM, known_models, load_pipeline
from protocol import ModelInfo

log = logging.getLogger(__name__)


@dataclass
class Facts:
    segment_s: float
    sample_rate: int
    frame_rate: int


@dataclass
class Resident:
    pipe: Pipeline
    keep_alive_s: float | None  # None: forever
    last_used: float
    load_s: float


def guess_facts(name: str) -> Facts:
    """What a released model will be before it is loaded (its name says 10 s or 30 s)."""
    return Facts(30.0 if re.search(r"30secs", name) else 10.0, 32000, 50)


def warm_up(pipe: Pipeline) -> float:
    """One short generation (one step per stage): allocations, kernels and caches get made before the
    first real request. With step graphs (CUDA) it runs at the model's full segment, one row, with the
    default preset's sampling, which captures the graphs of the most common request. Returns seconds."""
    t0 = time.perf_counter()
    steps = {"decoding_steps": (1,) * pipe.lm.n_q}
    if pipe.graphs is not None:
        job = Job([""], pipe.lm.cfg.segment_frames, resolve_params(DEFAULT_PRESET, steps, pipe.decoding),
                  seed=0)
    else:
        job = Job([""], 2 * pipe.lm.cfg.span_len, DecodeParams(**steps), seed=0)
    pipe.run_batch([job])
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
    return time.perf_counter() - t0


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"[:128]
    return str(device)


class ModelManager:
    def __init__(self, default: str, device: str = "auto", keep_alive_s: float = 300.0,
                 loader: Callable[..., Pipeline] = load_pipeline, clock: Callable[[], float] = time.monotonic,
                 rescorer: str | None = None):
        self.default, self.device, self.keep_alive_s = default, device, keep_alive_s
        self.loader, self.clock = loader, clock
        self.rescorer_name = rescorer
        self.rescorer = None  # magnet_rt.rescoring.MusicgenRescorer, once loaded
        self._lock = threading.Lock()
        self._resident: dict[str, Resident] = {}
        self._facts: dict[str, Facts] = {}

    def known(self) -> list[str]:
        names = known_models()
        return names if self.default in names else [self.default, *names]

    def is_known(self, name: str) -> bool:
        return name in self.known()

    def get(self, name: str) -> Pipeline | None:
        """The resident pipeline of `name`, or None."""
        with self._lock:
            r = self._resident.get(name)
            return r.pipe if r is not None else None

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def facts(self, name: str) -> Facts:
        with self._lock:
            return self._facts.get(name) or guess_facts(name)

    def _keep(self, name: str, keep_alive_s: float | None) -> float | None:
        if name == self.default:
            return None
        k = self.keep_alive_s if keep_alive_s is None else keep_alive_s
        return None if k < 0 else k

    def refresh(self, name: str, keep_alive_s: float | None = None) -> bool:
        """If `name` is resident, set its keep-alive and mark it used; returns whether it was."""
        with self._lock:
            r = self._resident.get(name)
            if r is not None:
                r.keep_alive_s, r.last_used = self._keep(name, keep_alive_s), self.clock()
            return r is not None

    def load(self, name: str, keep_alive_s: float | None = None) -> float:
        """Make `name` resident (worker thread). Returns load seconds, 0 if it already was. Raises
        CheckpointError (-> unknown_model) when it cannot be loaded."""
        if self.refresh(name, keep_alive_s):
            return 0.0
        t0 = time.perf_counter()
        pipe = self.loader(name, device=self.device)
        self._attach_rescorer(name, pipe)
        warm = warm_up(pipe)
        load_s = time.perf_counter() - t0
        random = name == TINY_RANDOM
        graphs = pipe.graphs
        steps = "off" if graphs is None else f"static ({graphs.captured()} CUDA graphs captured)"
        log.info("model %s loaded on %s in %.2f s (warm-up %.2f s, step graphs %s)%s", name,
                 describe_device(pipe.device), load_s, warm, steps,
                 " -- RANDOM WEIGHTS: it makes noise, not music" if random else "",
                 extra={"ctx": {"model": name, "load_s": load_s, "warm_up_s": warm, "random_weights": random,
                                "step_graphs": steps}})
        with self._lock:
            self._resident[name] = Resident(pipe, self._keep(name, keep_alive_s), self.clock(), load_s)
            self._facts[name] = Facts(float(pipe.segment_duration), int(pipe.sample_rate), int(pipe.frame_rate))
        return load_s

    def _attach_rescorer(self, name: str, pipe: Pipeline) -> None:
        if self.rescorer_name is None:
            return
        if self.rescorer is None:
            from magnet_rt.rescoring import load_rescorer

            t0 = time.perf_counter()
            self.rescorer = load_rescorer(self.rescorer_name, device=pipe.device)
            log.info("rescorer %s loaded in %.2f s", self.rescorer_name, time.perf_counter() - t0,
                     extra={"ctx": {"rescorer": self.rescorer_name}})
        try:
            self.rescorer.check_compatible(pipe.lm.n_q, pipe.lm.card)
            if self.rescorer.text_dim != pipe.text_encoder.dim:
                raise InvalidParams(f"rescorer {self.rescorer.name!r} takes {self.rescorer.text_dim}-d text states, "
                                    f"model {name} has {pipe.text_encoder.dim}-d")
        except InvalidParams:
            if name == self.default:
                raise
            log.warning("model %s: the rescorer does not fit it; rescore and hybrid_s are refused for it", name,
                        exc_info=True, extra={"ctx": {"model": name}})
            return
        pipe.rescorer = self.rescorer

    def unload(self, name: str) -> bool:
        with self._lock:
            r = self._resident.pop(name, None)
        if r is None:
            return False
        device = r.pipe.device
        del r
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("model %s unloaded", name, extra={"ctx": {"model": name}})
        return True

    def touch(self, name: str) -> None:
        with self._lock:
            if name in self._resident:
                self._resident[name].last_used = self.clock()

    def expired(self, busy: set[str]) -> list[str]:
        """Resident models idle past their keep-alive (not counting those with queued or running work)."""
        now = self.clock()
        with self._lock:
            return [n for n, r in self._resident.items()
                    if n not in busy and r.keep_alive_s is not None and now - r.last_used >= r.keep_alive_s]

    def info(self) -> list[ModelInfo]:
        now = self.clock()
        out = []
        for name in self.known():
            with self._lock:
                r = self._resident.get(name)
            f = self.facts(name)
            expires = None
            if r is not None and r.keep_alive_s is not None:
                expires = max(0.0, r.keep_alive_s - (now - r.last_used))
            out.append(ModelInfo(name=name, loaded=r is not None, segment_s=f.segment_s, sample_rate=f.sample_rate,
                                 expires_in_s=expires))
        return out
