"""Evaluation: perplexity and teacher agreement, offline zero-shot tasks, long-context recall, efficiency,
lm-evaluation-harness, and the `liger eval` report."""
