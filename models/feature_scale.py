"""How long a feature vector every family's trained layer reads.

Every family's features are unit length (sentence embeddings, pooled token states, hashed
n-gram counts, all L2-normalised) and its trained layer reads them times FEATURE_SCALE. The
tuned learning rates (``fl_server.run_config``) are for features of this length.
"""

FEATURE_SCALE = 3.0
"""Length of the features a head reads: the unit-length vector times 3.

DP-SGD clips each example's gradient as a whole. A linear head's per-example gradient is the
error times (features, 1), so with unit-length features the biases (77 numbers on BANKING77) get
as much of the clipped norm, and of the signal against the noise, as the weights (29,568). At
length 3 the weights get nine tenths of it. Measured on BANKING77's validation rows (10 sites,
alpha 0.5, learning rates re-tuned; docs/BENCHMARKS.md, "Longer features"). Exports record it as
``feature_scale`` so inference computes the same features. It does not change the guarantee:
the clip norm bounds each example's gradient whatever the features' length.
"""
