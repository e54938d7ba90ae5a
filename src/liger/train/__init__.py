"""Training: the resumable loop, the recipes (liger, lolcats, distillation) and the `linearize` job."""
