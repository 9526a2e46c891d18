"""`python -m magnet_rt.train.publish`: assemble the shipped bundle from an LM run and a codec whose
decoder was fine-tuned after the LM's tokens were made (`train.codec --decoder-only`).

    python -m magnet_rt.train.publish --lm out/runs/lm/bundle --codec out/runs/codec-dec/codec \
        --out magnet_rt/assets/demo [--metrics out/runs/adherence/adherence.json] [--decoding JSON]

The codec's encoder and codebooks must be the ones that made the LM's tokens (same fingerprint as the
LM bundle's codec): only the decoder may differ, so every token the LM writes still means what it meant
in training. The LM is stored in fp16 (the bundle's default), the codec in fp32. `--decoding` sets the
bundle's own decoding choices (`presets.ModelDecoding`: {"defaults": {...}, "presets": {"live": {...}}};
docs/TRAINING.md 5.3 says why the demo model has them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def publish(lm_bundle: str | Path, codec_dir: str | Path, out: str | Path, extra_metrics: dict | None = None,
            name: str = "demo", decoding: dict | None = None) -> Path:
    """`decoding`: a bundle `decoding` object (None: the LM bundle's)."""
    from ..bundle import load_bundle, load_codec, read_bundle_config, save_bundle
    from ..errors import CheckpointError
    from ..pipeline import MagnetPipeline
    from ..presets import ModelDecoding
    from .data import codec_fingerprint

    pipe = load_bundle(lm_bundle, device="cpu")
    codec = load_codec(codec_dir)
    if codec_fingerprint(codec) != codec_fingerprint(pipe.codec):
        raise CheckpointError(f"{codec_dir}: its encoder/codebooks differ from the ones that made the LM's tokens "
                              f"({lm_bundle}); only a --decoder-only fine-tune of that codec can be published with it")
    lm_cfg = read_bundle_config(lm_bundle)
    codec_cfg = read_bundle_config(codec_dir)
    pipe.codec = codec
    if decoding is not None:
        pipe = MagnetPipeline(pipe.lm, pipe.text_encoder, codec, pipe.name, pipe.options,
                              ModelDecoding.from_config(decoding))  # validated here: a typo fails early
    codec_metrics, codec_provenance = codec_cfg.get("metrics", {}), codec_cfg.get("provenance", {})
    if "codec" in codec_metrics and "lm" in codec_metrics:  # a published bundle as the codec's source: its codec's
        codec_metrics, codec_provenance = codec_metrics["codec"], codec_provenance.get("codec", codec_provenance)
    metrics = {"lm": lm_cfg.get("metrics", {}), "codec": codec_metrics, **(extra_metrics or {})}
    provenance = {"lm": lm_cfg.get("provenance", {}), "codec": codec_provenance}
    return save_bundle(pipe, out, provenance=provenance, metrics=metrics, name=name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m magnet_rt.train.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("--lm", required=True, help="the LM run's bundle folder (OUT/bundle of train.magnet)")
    p.add_argument("--codec", required=True, help="codec folder (OUT/codec of train.codec)")
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", action="append", default=[], help="JSON files whose content is added to metrics "
                   "under their stem (e.g. adherence.json -> metrics.adherence)")
    p.add_argument("--name", default="demo")
    p.add_argument("--decoding", metavar="JSON", default=None,
                   help='the bundle\'s decoding choices, e.g. {"defaults": {"higher_cfg_coef": 3}, '
                        '"presets": {"live": {"decoding_steps": [10, 2, 2, 2]}}} (default: the LM bundle\'s)')
    args = p.parse_args(argv)
    from ..errors import MagnetError

    extra = {Path(m).stem: json.loads(Path(m).read_text()) for m in args.metrics}
    try:
        decoding = None if args.decoding is None else json.loads(args.decoding)
    except json.JSONDecodeError as e:
        print(f"publish: error: --decoding takes a JSON object: {e}", file=sys.stderr)
        return 2
    try:
        out = publish(args.lm, args.codec, args.out, extra, args.name, decoding)
    except (MagnetError, FileNotFoundError) as e:
        print(f"publish: error: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    print(f"publish: {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
