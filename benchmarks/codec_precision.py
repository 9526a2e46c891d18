"""EnCodec decoding in half precision against fp32, on a model's own generations.

    python -m benchmarks.codec_precision [--model demo] [--device cpu|cuda] [--json OUT]

Generates a few 10 s takes with the model (preset `live`, fixed seeds), decodes their codes with the fp32
decoder and with fp16 / bf16 copies of it (`Codec(half=True)` is the fp16 one the pipeline uses on CUDA),
and reports the error: SNR per take (signal = the fp32 decode) and the max absolute sample error.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from magnet_rt.presets import resolve_params
from magnet_rt.registry import load_pipeline

from .report import emit

PROMPTS = ["lofi hip hop beat with piano", "fast techno drums with synth bass", "slow ambient pad with strings"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    pipe = load_pipeline(args.model, device=args.device)
    live = resolve_params("live", None, pipe.decoding)
    codes = torch.from_numpy(np.asarray(pipe.generate(PROMPTS, params=live, seed=0).codes))
    model = pipe.codec.model
    codes = codes.to(pipe.codec.device)
    result = {"model": args.model, "device": str(pipe.codec.device), "takes": len(PROMPTS), "duration_s": 10.0}
    with torch.inference_mode():
        ref = model.decode(codes[None], [None]).audio_values.float()
        emb = model.quantizer.decode(codes.transpose(0, 1))
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            decoder = copy.deepcopy(model.decoder).to(dtype)
            t = time.perf_counter()
            out = decoder(emb.to(dtype)).float()
            elapsed = time.perf_counter() - t
            err = out - ref
            snr = 10 * torch.log10(ref.pow(2).sum(-1) / err.pow(2).sum(-1)).flatten()
            result[name] = {"snr_db": [round(float(v), 2) for v in snr], "max_abs_error": float(err.abs().max()),
                            "finite": bool(torch.isfinite(out).all()), "decode_s": elapsed}
    result["fp32_peak"] = float(ref.abs().max())
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
