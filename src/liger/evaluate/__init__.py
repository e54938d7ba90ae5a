"""Evaluation: a linearized model against its teacher, on the same inputs.

Modules, one job each:
- scoring: log-likelihood of continuations (lm-eval's multiple-choice scoring), spans by teacher forcing
- perplexity: held-out perplexity, top-1 agreement and KL(teacher || student) on packed blocks
- quality: those on several sets (in-domain, out-of-domain) and by position bucket on one long document, the
  figures `liger linearize` reports for the converted and the trained model
- tasks: offline zero-shot cloze / continuation items from held-out text, scored as lm-eval does
- recall: passkey retrieval and multi-query associative recall probes
- efficiency (+ memory): prefill / decode speed, peak RSS and cache bytes (memory.PeakRSS is shared with `liger bench model`)
- lm_eval_adapter: lm-evaluation-harness on a model in memory, task names or local task YAML
- plots, report: PNGs, eval.md and the summary table; runner: `liger eval` (its flags: liger.cli.evaluate)
"""
