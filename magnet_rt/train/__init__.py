"""Training MAGNeT (and a small EnCodec) the way the paper and audiocraft's solver do.

- `masking`: the span-masking objective (stage draw, cosine mask rate, span-count LUT, masked inputs);
- `objective`: cross-entropy on the masked tokens of the drawn stage;
- `trainer`: AdamW + cosine warm-up + clipping + EMA, resumable checkpoints;
- `loop`: the resumable LM run (logs, held-out eval, bundle + released-format export);
- `data`: captioned audio folders -> cached codec tokens -> batches;
- `datagen` (+ `midi`): a deterministic captioned-MIDI music generator rendered with FluidSynth;
- `codec`: training a small EnCodec (transformers `EncodecModel`) with an EMA RVQ;
- `metrics`: mel distance and SI-SDR;
- `cli` (`magnet-rt train`), `magnet` (`python -m magnet_rt.train.magnet`): the LM training scripts.

Only `masking` and `objective` are imported here (torch + numpy); the rest load on demand.
"""

from .masking import MaskedBatch, expected_coverage, make_masked_batch, span_count_lut, span_mask
from .objective import masked_stage_loss

__all__ = ["MaskedBatch", "expected_coverage", "make_masked_batch", "masked_stage_loss", "span_count_lut",
           "span_mask"]
