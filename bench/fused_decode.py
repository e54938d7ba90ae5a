"""The fused decode step (liger.ops.fused_decode) against the eager one, in one process: the bundled teacher
linearized with the default LigerConfig (weights as --weights), a synthetic cache of --context tokens, then
rounds of --steps single-token steps alternating eager and fused, so a drift in machine speed hits both
alike. Prints the median ms per step of each, their ratio and the largest logit difference of one step.

    python bench/fused_decode.py [--context 512] [--batch 1] [--weights float32] [--rounds 7] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from liger.cache import CACHE_KWARG, output_cache
from liger.evaluate.efficiency import synthetic_cache
from liger.ops import fused_decode
from liger.quantize import WEIGHT_FORMATS, quantize_weights
from liger.surgery import linearize
from liger.teacher import load_teacher


def steps_ms(model, cache, ids, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        cache = output_cache(model(ids, use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache}))
    return (time.perf_counter() - t0) / steps * 1e3


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--weights", default="float32", choices=WEIGHT_FORMATS)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    model = quantize_weights(linearize(load_teacher()[0]), a.weights)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (a.batch, 1), generator=torch.Generator().manual_seed(0))
    # one step each after a real 128-token prefill (a synthetic cache's random states make the normalised
    # output ill-conditioned): the logits agree; the fused step compiles on its first use
    prompt = torch.randint(0, vocab, (a.batch, 128), generator=torch.Generator().manual_seed(1))
    logits = {}
    for on in (False, True):
        fused_decode.set_enabled(on)
        cache = output_cache(model(prompt, use_cache=True))
        t0 = time.perf_counter()
        logits[on] = model(ids, use_cache=True, **{CACHE_KWARG: cache}).logits
        if on:
            compile_s = time.perf_counter() - t0
    why = fused_decode.fused_decode_unavailable()
    times = {False: [], True: []}
    caches = {on: synthetic_cache(model, a.batch, a.context) for on in (False, True)}
    for _ in range(a.rounds):
        for on in (False, True):
            fused_decode.set_enabled(on)
            times[on].append(steps_ms(model, caches[on], ids, a.steps))
    fused_decode.set_enabled(None)
    eager, fused = (statistics.median(times[on]) for on in (False, True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bundled model linearized, weights "
          f"{a.weights}, context {a.context}, batch {a.batch}; fused path: {why or 'available'}")
    print(f"first fused step (compiles): {compile_s:.1f} s; max |logit difference| fused vs eager: "
          f"{(logits[True] - logits[False]).abs().max().item():.2e}")
    print(f"decode ms/step, median of {a.rounds} rounds of {a.steps}: eager {eager:.1f}, fused {fused:.1f} "
          f"({eager / fused:.2f}x)")


if __name__ == "__main__":
    main()
