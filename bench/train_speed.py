"""Tokens/s of a LoRA training step (q/k/v, r=8) of both models at 512, 1,024 and 4,096 tokens, bf16 autocast
and float32 (same as `liger bench train`). See liger.bench.train.

    python bench/train_speed.py --out bench-results/train [--train-lengths 512,1024,4096] [--precisions bf16,fp32]
"""

from liger.cli.bench import standalone

if __name__ == "__main__":
    standalone("train")
