"""Per-layer mixed-precision weight quantization (issue 17): the second compression stage after pruning.

One module per concept:

- ``fake``: per-output-channel symmetric weight fake quantization (torch's own op), ``wrap`` / ``bake``;
- ``size``: :class:`~rlprune.quant.size.QuantSpace`, the quantizable layers and the exact, batched
  ``size_ratio`` of bit vectors (numpy, no models built);
- ``export``: integer weights and scales in one file, and ``load_quantized``;
- ``baselines``: uniform bits and the HAQ-style sensitivity rule, both fitted to a size budget;
- ``worldmodel``: measured (bits -> accuracy drop) samples and a small model of them, with its fidelity;
- ``qat``: the quantization-aware fine-tune and its validation/test scores;
- ``search`` and ``pipeline``: the RL search on the bits env and ``rlprune quantize`` (the only Ray users).

Weights only: activations stay fp32 everywhere (fake-quantized forward, export, size model).
"""
