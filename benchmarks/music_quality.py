"""An outside ear: judges a model's audio with tools nobody here wrote (librosa, Spotify's basic-pitch via
onnxruntime, mir_eval), because our own metrics once called a 50 Hz frame buzz good.

    python -m benchmarks.music_quality --data out/data/synth --bundle new=magnet_rt/assets/demo \
        --bundle old=out/bundles/demo-old --clips 12 --takes 24 --out out/music_quality

(a) Codec round trip of held-out clips (each bundle's codec: encode -> decode): chroma cosine, onset-strength
    correlation, note F1 of basic-pitch's transcription of the reconstruction against its transcription of
    the source (mir_eval, 50 ms onset tolerance, offsets ignored), and the two buzz measures.
(b) Takes from held-out captions (each bundle's LM, preset `--preset`): the buzz measures, tempo from
    librosa's beat tracker vs the caption's bpm (within 8 %, or half / double), the percussive energy share
    (librosa HPSS) of "drums" vs "no drums" captions compared pairwise (every drums take against every no-drums
    take, and in minimal pairs: each caption against itself with its drums phrase turned over, same seed), key
    (Krumhansl-Kessler profiles on librosa's chroma) vs the caption's tonic and mode (right, and the rank of
    the caption's key among the 24: 12.5 by chance; mir_eval's MIREX weighted score, which credits a fifth, the
    relative and the parallel key in part), notes per second (basic-pitch), and the distinct tokens
    per codebook of each take.
The row `clips` measures the held-out training clips themselves under (b) (the ceiling). `training_clips`
is the buzz measures' range over every `--range-every`-th training clip, and each bundle's
`inside_training_range` counts its takes inside that range on both measures (the issue's target).

Buzz measures: the normalised autocorrelation of the waveform at one codec frame (20 ms) and the share of
200 Hz - 8 kHz energy lying within 2 Hz of a multiple of 50 Hz; music sits near 0 and at a few %.
Writes OUT/music_quality.json (means and rates; `publish --metrics` takes it), OUT/music_quality-items.json
(every clip and take), OUT/spectrograms.png (one caption: the clip and each bundle's take) and
OUT/codec-spectrograms.png (one held-out clip and each codec's reconstruction of it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from magnet_rt.train.datagen import KEYS  # the generator's spelling of the captions' keys

if TYPE_CHECKING:
    from magnet_rt.train.data import CaptionedFile

log = logging.getLogger("benchmarks.music_quality")

# Krumhansl & Kessler (1982) key profiles, tonic first
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
FRAME_S = 0.02  # one codec frame at 50 frames/s
LM_HELD_OUT = 96  # the demo LM's held-out tail (train.magnet --valid 96): captions come from it


# ---- measures ------------------------------------------------------------------------------------------
def buzz(x: np.ndarray, sr: int) -> dict[str, float]:
    """Autocorrelation at one 20 ms frame and the share of 200 Hz-8 kHz energy on the 50 Hz comb."""
    m = x.astype(np.float64) - x.mean()
    lag = int(FRAME_S * sr)
    a, b = m[:-lag], m[lag:]
    corr = float(a @ b / (np.sqrt((a @ a) * (b @ b)) + 1e-20))
    power = np.abs(np.fft.rfft(m * np.hanning(len(m)))) ** 2
    f = np.fft.rfftfreq(len(m), 1 / sr)
    band = (f > 200) & (f < 8000)
    on_comb = np.abs(f - 50 * np.round(f / 50)) < 2
    comb = float(power[band & on_comb].sum() / (power[band].sum() + 1e-30))
    return {"corr_20ms": corr, "comb_50hz": comb}


def chroma_cosine(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    """Mean over frames of the cosine between the two chromagrams (frames where the source is silent skipped)."""
    import librosa

    a = librosa.feature.chroma_stft(y=ref, sr=sr, hop_length=1024)
    b = librosa.feature.chroma_stft(y=est, sr=sr, hop_length=1024)
    n = min(a.shape[1], b.shape[1])
    a, b = a[:, :n], b[:, :n]
    loud = librosa.feature.rms(y=ref, hop_length=1024)[0, :n] > 1e-3
    cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0) + 1e-12)
    return float(cos[loud].mean()) if loud.any() else float("nan")


def onset_correlation(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    import librosa

    a = librosa.onset.onset_strength(y=ref, sr=sr)
    b = librosa.onset.onset_strength(y=est, sr=sr)
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


class Transcriber:
    """basic-pitch (Spotify, ICASSP 2022) with its ONNX model from inside its wheel, run by onnxruntime."""

    def __init__(self):
        logging.getLogger().setLevel(logging.ERROR)  # basic-pitch warns about TF/CoreML/TFLite it does not need
        from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
        from basic_pitch.inference import Model

        self.model = Model(build_icassp_2022_model_path(FilenameSuffix.onnx))
        logging.getLogger().setLevel(logging.WARNING)

    def notes(self, x: np.ndarray, sr: int, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
        """-> (intervals [n, 2] s, pitches [n] Hz)."""
        import soundfile as sf
        from basic_pitch.inference import predict

        wav = tmp / f"bp-{os.getpid()}.wav"
        sf.write(str(wav), x, sr)
        _, _, events = predict(str(wav), self.model)
        wav.unlink()
        if not events:
            return np.zeros((0, 2)), np.zeros(0)
        iv = np.array([[e[0], e[1]] for e in events], dtype=float)
        hz = 440.0 * 2 ** ((np.array([e[2] for e in events], dtype=float) - 69) / 12)
        return iv, hz


def note_f1(ref: tuple[np.ndarray, np.ndarray], est: tuple[np.ndarray, np.ndarray]) -> float:
    import mir_eval

    if len(ref[1]) == 0 or len(est[1]) == 0:
        return 0.0
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref[0], ref[1], est[0], est[1], onset_tolerance=0.05, offset_ratio=None)
    return float(f1)


def tempo(x: np.ndarray, sr: int) -> float:
    import librosa

    bpm, _ = librosa.beat.beat_track(y=x, sr=sr)
    return float(np.atleast_1d(bpm)[0])


def tempo_ok(measured: float, caption_bpm: float, tolerance: float = 0.08) -> bool:
    return any(abs(measured - caption_bpm * k) <= tolerance * caption_bpm * k for k in (0.5, 1.0, 2.0))


def beat_phase(x: np.ndarray, sr: int, bpm: float) -> complex:
    """Where the onsets fall on the caption's beat counted from sample 0: the onset-strength envelope o(t)
    as a vector, sum of o(t) exp(2 pi i t bpm / 60) over sum of o(t). Its length says how strongly the take
    pulses at the beat; averaged over takes (`beat_phase_agreement`) only a phase they share survives, which
    is what a take rendered onto a DAW's bar lines needs (the clips start on beat 1)."""
    import librosa

    o = librosa.onset.onset_strength(y=x, sr=sr)
    t = librosa.times_like(o, sr=sr)
    return complex((o * np.exp(2j * np.pi * t * bpm / 60.0)).sum() / (o.sum() + 1e-9))


def percussive_share(x: np.ndarray) -> float:
    import librosa

    harmonic, percussive = librosa.effects.hpss(x)
    return float((percussive ** 2).sum() / ((harmonic ** 2).sum() + (percussive ** 2).sum() + 1e-20))


def mean_chroma(x: np.ndarray, sr: int) -> np.ndarray:
    """[12] librosa's CQT chroma averaged over the take, C first."""
    import librosa

    return librosa.feature.chroma_cqt(y=x, sr=sr).mean(1)


def tonic_shares(chroma: np.ndarray, key: str) -> dict[str, float]:
    """The shares of a mean chroma (`mean_chroma`) on `key`'s tonic and on its fifth: how clearly the music
    leans on its tonic. With the tonic no stronger than the fifth, a key estimate tends to land a fifth up."""
    tonic = KEYS.index(key)
    total = float(chroma.sum()) or 1.0
    return {"tonic_share": float(chroma[tonic]) / total, "fifth_share": float(chroma[(tonic + 7) % 12]) / total}


def rank_keys(chroma: np.ndarray) -> list[tuple[str, str]]:
    """The 24 (tonic, mode) pairs, best first, by the correlation of a mean chroma with a rotated
    Krumhansl-Kessler profile."""
    scored = sorted(((np.corrcoef(chroma, np.roll(profile, tonic))[0, 1], tonic, mode)
                     for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)) for tonic in range(12)),
                    reverse=True)
    return [(KEYS[tonic], mode) for _, tonic, mode in scored]


KEY_RELATIONS = {1.0: "same", 0.5: "fifth", 0.3: "relative", 0.2: "parallel", 0.0: "other"}  # MIREX's weights


def key_measures(x: np.ndarray, sr: int, truth: tuple[str, str]) -> dict:
    """Is the take in `truth` (tonic, mode), where does `truth` rank among the 24, how the estimate relates to
    it (mir_eval's MIREX weighted key score: 1 same, 0.5 a fifth up, 0.3 relative, 0.2 parallel, 0 other), and
    the tonic and fifth shares: one chroma for all of them."""
    import mir_eval

    chroma = mean_chroma(x, sr)
    ranking = rank_keys(chroma)
    weighted = mir_eval.key.weighted_score(" ".join(truth), " ".join(ranking[0]))
    return {"key_ok": ranking[0] == truth, "key_rank": float(ranking.index(truth) + 1),
            "key_estimate": " ".join(ranking[0]), "key_weighted": weighted,
            "key_relation": KEY_RELATIONS[weighted], **tonic_shares(chroma, truth[0])}


def key_tempo_buzz(x: np.ndarray, sr: int, c: CaptionedFile) -> dict:
    """What a take is judged on against its caption without transcription: the buzz measures, the tempo
    (and whether it is the caption's), and `key_measures`."""
    bpm = tempo(x, sr)
    return {**buzz(x, sr), "tempo": bpm, "tempo_ok": tempo_ok(bpm, c.labels["tempo"]),
            "drums": bool(c.labels["drums"]), **key_measures(x, sr, (c.labels["key"], c.labels["mode"]))}


def estimate_key(x: np.ndarray, sr: int) -> tuple[str, str]:
    """(tonic, mode) maximising the correlation of the mean chroma with a rotated Krumhansl-Kessler profile."""
    return rank_keys(mean_chroma(x, sr))[0]


# ---- data: the LM trainer's own file list and order (train.data.find_captioned_audio) -----------------------
def held_out(data: Path, n_clips: int, n_captions: int,
             every: int = 50) -> tuple[list[CaptionedFile], list[CaptionedFile]]:
    """Codec clips: held out from the codec (name hash); captions: the LM's held-out tail (the last files),
    taken alternately with and without drums so the drums comparison has pairs."""
    from magnet_rt.train.codec import is_held_out
    from magnet_rt.train.data import find_captioned_audio

    clips = find_captioned_audio(data)
    codec_clips = [c for c in clips if is_held_out(c.path.name, every)][:n_clips]
    tail = clips[-LM_HELD_OUT:]
    drums = [c for c in tail if c.labels["drums"]]
    quiet = [c for c in tail if not c.labels["drums"]]
    paired = [c for pair in zip(drums, quiet, strict=False) for c in pair]
    captions = (paired + [c for c in tail if c not in paired])[:n_captions]
    return codec_clips, captions


def training_buzz_range(data: Path, every: int, seconds: float) -> dict:
    """The buzz measures' range over every `every`-th training clip (the LM's training files, not the
    held-out tail; a folder of <= 96 clips: all of them): what "inside the training clips' range" means."""
    from magnet_rt.train.data import find_captioned_audio

    every_clip = find_captioned_audio(data)
    clips = (every_clip[:-LM_HELD_OUT] or every_clip)[::every]
    per = [buzz(*read(c.path, seconds)) for c in clips]
    top = sorted(range(len(per)), key=lambda i: -per[i]["corr_20ms"])[:5]  # the clips that set the upper end
    return {"n": len(per), "corr_20ms_range": [min(p["corr_20ms"] for p in per), max(p["corr_20ms"] for p in per)],
            "comb_50hz_range": [min(p["comb_50hz"] for p in per), max(p["comb_50hz"] for p in per)],
            "highest_corr_20ms": [{"caption": clips[i].caption, "corr_20ms": per[i]["corr_20ms"]} for i in top]}


def inside(row: dict, ref: dict) -> int:
    """How many of a takes row's items lie inside `ref`'s range on both buzz measures (the comb share only
    from above: less energy on the 50 Hz comb than any clip is no buzz)."""
    (c0, c1), (_, m1) = ref["corr_20ms_range"], ref["comb_50hz_range"]
    return sum(c0 <= p["corr_20ms"] <= c1 and p["comb_50hz"] <= m1 for p in row["per_item"])


def read(path: Path, seconds: float) -> tuple[np.ndarray, int]:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(1)[: int(seconds * sr)], sr


# ---- rows --------------------------------------------------------------------------------------------------
def codec_row(codec, clips: list[CaptionedFile], seconds: float, ear: Transcriber, tmp: Path,
              source_notes: dict, panels: list) -> dict:
    """The round trip of each clip; the first clip's reconstruction joins `panels` (the codec PNG)."""
    per = []
    for c in clips:
        x, sr = read(c.path, seconds)
        codes = codec.encode(x, sr)
        y = codec.decode(codes)[0, 0].cpu().numpy()[: len(x)]
        if c is clips[0]:
            panels.append(y)
        if c.path not in source_notes:
            source_notes[c.path] = ear.notes(x, sr, tmp)
        truth = (c.labels["key"], c.labels["mode"])
        keys = {"": key_measures(y, sr, truth), "source_": key_measures(x, sr, truth)}
        per.append({"chroma_cosine": chroma_cosine(x, y, sr), "onset_corr": onset_correlation(x, y, sr),
                    "note_f1": note_f1(source_notes[c.path], ear.notes(y, sr, tmp)), **buzz(y, sr),
                    **{f"source_{k}": v for k, v in buzz(x, sr).items()},
                    **{f"{side}{k}": float(m[k]) for side, m in keys.items()
                       for k in ("key_ok", "key_weighted", "tonic_share", "fifth_share")}})
    return summarise(per)


def takes_row(audios: list[np.ndarray], sr: int, captions: list[CaptionedFile], ear: Transcriber, tmp: Path,
              codes: list | None = None) -> dict:
    """(b) for each take; `codes` ([K, T] per take): also the distinct tokens per codebook (a collapse of
    the higher codebooks into a few tokens sounds as steady tones)."""
    per = []
    for i, (x, c) in enumerate(zip(audios, captions, strict=True)):
        iv, _ = ear.notes(x, sr, tmp)
        phase = beat_phase(x, sr, c.labels["tempo"])
        per.append({**key_tempo_buzz(x, sr, c), "beat_phase": [phase.real, phase.imag],
                    "percussive_share": percussive_share(x),
                    "notes_per_s": len(iv) / (len(x) / sr), "dc": float(x.mean()),
                    **({"distinct_tokens": [len(np.unique(k)) for k in np.asarray(codes[i])]} if codes else {})})
    row = summarise(per)
    with_drums = [p for p in per if p["drums"]]
    row["tempo_ok_with_drums"] = float(np.mean([p["tempo_ok"] for p in with_drums])) if with_drums else None
    row["beat_phase_agreement"] = float(abs(np.mean([complex(*p["beat_phase"]) for p in with_drums]))) \
        if with_drums else None
    pairs = [(a["percussive_share"], b["percussive_share"]) for a in with_drums for b in per if not b["drums"]]
    row["drums_separated"] = float(np.mean([a > b for a, b in pairs])) if pairs else None
    row["key_ok"] = float(np.mean([p["key_ok"] for p in per]))
    if codes:
        row["min_distinct_tokens"] = np.min([p["distinct_tokens"] for p in per], axis=0).tolist()
    row["corr_20ms_range"] = [min(p["corr_20ms"] for p in per), max(p["corr_20ms"] for p in per)]
    row["comb_50hz_range"] = [min(p["comb_50hz"] for p in per), max(p["comb_50hz"] for p in per)]
    return row


def summarise(per: list[dict]) -> dict:
    keys = [k for k, v in per[0].items() if isinstance(v, float) and not isinstance(v, bool)]
    return {"n": len(per), **{k: float(np.mean([p[k] for p in per])) for k in keys}, "per_item": per}


def generate_takes(pipe, captions: list[str], seconds: float, preset: str, seed: int,
                   overrides: dict | None = None) -> tuple[list[np.ndarray], list]:
    """One take per caption (seed + its index): (mono audio, codes [K, T]) lists."""
    from magnet_rt.presets import resolve_params

    params = resolve_params(preset, overrides, pipe.decoding)
    results = [pipe.generate([c], duration_s=seconds, params=params, seed=seed + i) for i, c in enumerate(captions)]
    return [r.audio[0].mean(0) for r in results], [np.asarray(r.codes[0]) for r in results]


def drum_twins(captions: list[CaptionedFile]) -> list[str | None]:
    """Each caption with its drums phrase turned over (`contrast.with_drums`), None where it cannot be."""
    from magnet_rt.train.contrast import with_drums

    return [with_drums(c.caption, not c.labels["drums"]) for c in captions]


def clip_drum_twins(captions: list[CaptionedFile], seconds: float, tmp: Path) -> dict[int, np.ndarray]:
    """The ceiling of the minimal pairs: each held-out clip re-rendered by the datagen with its drums turned
    over (same notes), where its labels carry the datagen seed."""
    from magnet_rt.train.datagen import render_drum_twin

    return {i: render_drum_twin(c.labels["seed"], seconds, tmp) for i, c in enumerate(captions)
            if isinstance(c.labels.get("seed"), str)}


def drum_pairs(row: dict, twins: list[str | None], twin_takes: dict[int, np.ndarray]) -> None:
    """Minimal pairs: a caption's take against its drum twin's take (same seed); separated when the one
    whose caption has drums has the larger percussive share. Adds `drum_pairs` and `drum_pairs_separated`."""
    sep = []
    for i, p in enumerate(row["per_item"]):
        if twins[i] is None or i not in twin_takes:
            continue
        twin_share = percussive_share(twin_takes[i])
        p["twin_percussive_share"] = twin_share
        sep.append(p["percussive_share"] > twin_share if p["drums"] else twin_share > p["percussive_share"])
    row["drum_pairs"] = len(sep)
    row["drum_pairs_separated"] = float(np.mean(sep)) if sep else None


def spectrogram_png(path: Path, panels: list[tuple[str, np.ndarray]], sr: int, caption: str) -> None:
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels)), sharex=True)
    for ax, (title, x) in zip(np.atleast_1d(axes), panels, strict=True):
        db = librosa.amplitude_to_db(np.abs(librosa.stft(x, n_fft=2048, hop_length=256)), ref=np.max)
        librosa.display.specshow(db, sr=sr, hop_length=256, x_axis="time", y_axis="log", ax=ax, vmin=-80)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(40, 8000)
    fig.suptitle(f"“{caption}”", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.music_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a datagen folder (captions.jsonl with labels)")
    p.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH",
                   help="a model to judge (bundle folder or registry name); repeat for several")
    p.add_argument("--codec", action="append", default=[], metavar="NAME=PATH",
                   help="a codec alone (codec folder, bundle or released checkpoint): round trip only")
    p.add_argument("--clips", type=int, default=12, help="held-out clips for the codec round trip")
    p.add_argument("--takes", type=int, default=24, help="held-out captions to generate from")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--preset", default="balanced")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="a decoding parameter on top of the preset for every bundle, e.g. max_cfg_coef=3")
    p.add_argument("--held-out-every", type=int, default=50, help="the codec trainer's held-out split (1: every file)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--range-every", type=int, default=1,
                   help="the training clips' buzz range is measured on every N-th training clip (1: all, as the "
                        "issue words it; N > 1 is quicker and narrower)")
    p.add_argument("--out", default="out/music_quality")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from magnet_rt.registry import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    overrides = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    out.mkdir(parents=True, exist_ok=True)
    codec_clips, captions = held_out(data, args.clips, args.takes, args.held_out_every)
    if not codec_clips or not captions:
        print(f"music_quality: error: no held-out clips or captions in {data}", file=sys.stderr)
        return 2
    ear = Transcriber()
    t0 = time.time()
    sr = read(captions[0].path, 0.1)[1]
    sources = [read(c.path, args.seconds)[0] for c in captions]
    result: dict = {"command": " ".join(["python -m benchmarks.music_quality", *(argv or sys.argv[1:])]),
                    "data": str(data), "seconds": args.seconds, "preset": args.preset, "codec": {}, "takes": {}}
    if args.bundle:
        result["training_clips"] = training_buzz_range(data, args.range_every, args.seconds)
        result["takes"]["clips"] = takes_row(sources, sr, captions, ear, out)
        drum_pairs(result["takes"]["clips"], drum_twins(captions), clip_drum_twins(captions, args.seconds, out))
    panels = [("training clip (FluidSynth)", sources[0])]
    source_notes: dict = {}
    codec_panels: list[tuple[str, np.ndarray]] = []
    for spec in args.codec:
        from magnet_rt.train.data import load_codec_any

        name, _, path = spec.partition("=")
        log.info("%s: codec round trip of %d clips", name, len(codec_clips))
        recon: list[np.ndarray] = []
        result["codec"][name] = codec_row(load_codec_any(path), codec_clips, args.seconds, ear, out, source_notes,
                                          recon)
        codec_panels.append((f"{name}: codec round trip (encode -> 4 codebooks -> decode)", recon[0]))
    for spec in args.bundle:
        name, _, path = spec.partition("=")
        pipe = load_pipeline(path or name, device="cpu")
        log.info("%s: codec round trip of %d clips", name, len(codec_clips))
        recon = []
        result["codec"][name] = codec_row(pipe.codec, codec_clips, args.seconds, ear, out, source_notes, recon)
        codec_panels.append((f"{name}: codec round trip (encode -> 4 codebooks -> decode)", recon[0]))
        log.info("%s: %d takes", name, len(captions))
        texts = [c.caption for c in captions]
        takes, codes = generate_takes(pipe, texts, args.seconds, args.preset, args.seed, overrides)
        row = result["takes"][name] = takes_row(takes, pipe.sample_rate, captions, ear, out, codes)
        twins = drum_twins(captions)
        log.info("%s: %d drum twins", name, sum(t is not None for t in twins))
        twin_audio = {}
        for i, t in enumerate(twins):
            if t is not None:  # the same seed as the caption's own take
                twin_audio[i] = generate_takes(pipe, [t], args.seconds, args.preset, args.seed + i, overrides)[0][0]
        drum_pairs(row, twins, twin_audio)
        row["inside_training_range"] = inside(row, result["training_clips"])
        panels.append((f"{name}: take, preset {args.preset}, seed {args.seed}", takes[0]))
    result["seconds_taken"] = time.time() - t0
    (out / "music_quality-items.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "music_quality.json").write_text(json.dumps(strip_items(result), indent=2, default=float) + "\n")
    if args.bundle:
        spectrogram_png(out / "spectrograms.png", panels, sr, captions[0].caption)
    if codec_panels:
        source = read(codec_clips[0].path, args.seconds)[0]
        spectrogram_png(out / "codec-spectrograms.png", [("held-out clip (FluidSynth)", source), *codec_panels], sr,
                        codec_clips[0].caption)
    print(json.dumps(strip_items(result), indent=2, default=float))
    return 0


def strip_items(result: dict) -> dict:
    """The result without per-item lists (what the README and docs quote)."""
    return {k: strip_items(v) if isinstance(v, dict) else v for k, v in result.items() if k != "per_item"}


if __name__ == "__main__":
    raise SystemExit(main())
