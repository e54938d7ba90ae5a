"""`liger bench` on tiny sizes (a tiny random Llama via the hidden --tiny-model flag), the FLOP count of
chunk_gla, and the single-token decode path of Liger attention (in-place state, ring-buffer window)."""

import json

import pytest
import torch
from conftest import tiny_model
from torch.utils.flop_counter import FlopCounterMode

import liger
from liger.bench.ops import gla_flops, gla_inputs
from liger.cli import main
from liger.mixers.gla import GLACore
from liger.ops import chunk_gla
from liger.cache import CACHE_KWARG, output_cache

TARGET_KEYS = {"target", "measured", "met", "note"}
HEADER_KEYS = {"date", "machine", "machine_info", "command"}


def test_gla_flops_hand_count():
    # B=1, one head, T=16 (one chunk of 16), K=V=2: q k^T 2*16*16*2 + A v 2*16*16*2 + k^T v 2*16*2*2 + q S 2*16*2*2
    assert gla_flops(1, 16, 1, 1, 2, 2) == 1024 + 1024 + 128 + 128
    # GQA, T=100 -> two chunks of 64 (padded): per (batch, key head, chunk), G=2 query heads, K=4, V=8
    per_chunk = 2 * 2 * 64 * 64 * 4 + 2 * 2 * 64 * 64 * 8 + 2 * 64 * 4 * 8 + 2 * 2 * 64 * 4 * 8
    assert gla_flops(2, 100, 4, 2, 4, 8) == 2 * 2 * 2 * per_chunk


@pytest.mark.parametrize("T,Hq,Hk", [(16, 1, 1), (100, 4, 2), (300, 9, 3)])
def test_gla_flops_match_the_matmuls_chunk_gla_runs(T, Hq, Hk):
    q, k, v, g = gla_inputs(2, T, Hk, 8, 8, Hq=Hq)
    def baddbmm_(self_shape, a_shape, b_shape, *args, **kwargs):  # [n, i, j] @ [n, j, k]: 2 n i j k
        return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]

    in_place = {torch.ops.aten.baddbmm_: baddbmm_}  # chunk_gla accumulates with baddbmm_, not in torch's table
    with FlopCounterMode(display=False, custom_mapping=in_place) as counter, torch.no_grad():
        chunk_gla(q, k, v, g)
    assert counter.get_total_flops() == gla_flops(2, T, Hq, Hk, 8, 8)


def _read(out):
    payload = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert HEADER_KEYS <= set(payload) and {"cpu", "cores", "torch", "device"} <= set(payload["machine_info"])
    assert payload["targets"] and all(set(t) == TARGET_KEYS for t in payload["targets"])
    assert "| target | measured ratio | met | note |" in md and payload["command"] in md
    return payload, md


def test_bench_ops_quick(tmp_path):
    out = tmp_path / "ops"
    assert main(["bench", "ops", "--out", str(out), "--quick", "--lengths", "32,64", "--ref-lengths", "32",
                 "--heads", "2", "--kv-heads", "1", "--head-dim", "8", "--matmul-size", "64",
                 "--op-repeats", "1"]) == 0
    payload, md = _read(out)
    assert payload["matmul"]["n"] == 64 and payload["matmul"]["gflops_per_s"] > 0
    rows = {r["T"]: r for r in payload["rows"]}
    assert set(rows) == {32, 64}
    for r in rows.values():
        for key in ("chunk_gla_fwd_ms", "sdpa_fwd_ms", "chunk_gla_fwd_bwd_ms", "sdpa_fwd_bwd_ms",
                    "chunk_gla_gflops_per_s", "fraction_of_matmul", "speedup_vs_sdpa_fwd"):
            assert r[key] > 0
        assert r["chunk_gla_gflop"] == pytest.approx(gla_flops(1, r["T"], 2, 1, 8, 8) / 1e9)
    assert rows[32]["reference_fwd_ms"] > 0 and rows[32]["reference_fwd_bwd_ms"] > 0
    assert "reference_fwd_ms" not in rows[64]  # the token-by-token ops run only at --ref-lengths
    assert payload["targets"][0]["met"] is None  # T=4096 not measured: no verdict
    assert (out / "ops_time.png").stat().st_size > 0 and (out / "ops_gflops.png").stat().st_size > 0


def test_bench_ops_compile_times_the_compiled_op_and_checks_it(tmp_path):
    out = tmp_path / "ops"
    assert main(["bench", "ops", "--out", str(out), "--lengths", "40", "--ref-lengths", "40", "--heads", "2",
                 "--kv-heads", "1", "--head-dim", "8", "--matmul-size", "64", "--op-repeats", "1",
                 "--compile"]) == 0
    payload, md = _read(out)
    (row,) = payload["rows"]
    assert row["compile_s"] > 0 and row["chunk_gla_compiled_fwd_ms"] > 0 and row["chunk_gla_compiled_fwd_bwd_ms"] > 0
    assert row["compiled_max_abs_diff"] < 1e-4  # the compiled op computes the same outputs
    assert "torch.compile(chunk_gla)" in md

def test_bench_model_quick(tmp_path):
    out = tmp_path / "model"
    assert main(["bench", "model", "--out", str(out), "--quick", "--tiny-model", "--contexts", "16,48",
                 "--batch-sizes", "1,2", "--decode-tokens", "2", "--max-prefill-tokens", "48"]) == 0
    payload, md = _read(out)
    rows = payload["rows"]
    assert {(r["model"], r["context"], r["batch"]) for r in rows} == {
        (m, L, B) for m in ("original", "linearized") for L in (16, 48) for B in (1, 2)}
    for r in rows:
        assert r["decode_ms"] > 0 and r["peak_rss_bytes"] > 0 and r["cache_bytes"] > 0
        assert r["cache_source"] == ("prefill" if r["context"] * r["batch"] <= 48 else "synthetic")
        assert (r["prefill_s"] is None) == (r["cache_source"] == "synthetic")
    lin = {(r["context"], r["batch"]): r["cache_bytes"] for r in rows if r["model"] == "linearized"}
    assert lin[16, 1] == lin[48, 1] and lin[48, 2] == 2 * lin[48, 1]  # constant; synthetic == real shapes
    orig = {(r["context"], r["batch"]): r["cache_bytes"] for r in rows if r["model"] == "original"}
    assert orig[48, 2] == 2 * orig[48, 1] and orig[48, 1] > orig[16, 1]  # synthetic KV: same shapes as real
    assert {r["model"] for r in payload["non_attention"]} == {"original", "linearized"}
    cache_target = next(t for t in payload["targets"] if "cache bytes" in t["target"])
    assert cache_target["measured"] == 1.0 and cache_target["met"] is True
    for png in ("model_decode.png", "model_prefill.png", "model_cache.png", "model_peak_memory.png",
                "model_non_attention.png"):
        assert (out / png).stat().st_size > 0


def test_bench_profile_splits_the_decode_step_by_module(tmp_path):
    out = tmp_path / "profile"
    assert main(["bench", "profile", "--out", str(out), "--quick", "--tiny-model", "--context", "40",
                 "--profile-batch-sizes", "1,2", "--steps", "2"]) == 0
    payload, md = _read(out)
    assert {(r["model"], r["batch"]) for r in payload["rows"]} == {
        (m, B) for m in ("original", "linearized") for B in (1, 2)}
    for r in payload["rows"]:
        parts = r["parts"]
        assert all(parts[k] > 0 for k in ("attention", "mlp", "lm_head"))
        assert parts["other"] >= 0 and sum(parts.values()) == pytest.approx(r["step_ms"])
        assert r["ops"] and all(0 < op["share"] <= 1 for op in r["ops"])
    assert "Top operators" in md

def test_bench_train_quick(tmp_path):
    out = tmp_path / "train"
    assert main(["bench", "train", "--out", str(out), "--quick", "--tiny-model", "--train-lengths", "16,32",
                 "--precisions", "bf16,fp32", "--train-repeats", "1"]) == 0
    payload, md = _read(out)
    assert {(r["model"], r["precision"], r["tokens"]) for r in payload["rows"]} == {
        (m, p, T) for m in ("original", "linearized") for p in ("bf16", "fp32") for T in (16, 32)}
    assert all(r["tokens_per_s"] > 0 for r in payload["rows"])
    # same adapters on both: LoRA r=8 on q/k/v of 2 layers (hidden 64, 4x16 query and 2x16 key/value dims)
    assert {r["trainable_parameters"] for r in payload["rows"]} == {2 * 8 * ((64 + 64) + 2 * (64 + 32))}
    assert len(payload["targets"]) == 2 and (out / "train_tokens_per_s.png").stat().st_size > 0


def test_bench_all_and_errors(tmp_path, capsys):
    out = tmp_path / "all"
    assert main(["bench", "all", "--out", str(out), "--quick", "--tiny-model", "--lengths", "32",
                 "--ref-lengths", "32", "--heads", "2", "--kv-heads", "1", "--head-dim", "8", "--matmul-size", "64",
                 "--op-repeats", "1", "--forward-only", "--contexts", "16", "--decode-tokens", "1",
                 "--train-lengths", "16", "--train-repeats", "1"]) == 0
    summary = (out / "results.md").read_text()
    assert all((out / part / "results.json").is_file() for part in ("ops", "model", "train"))
    assert "[ops/results.md]" in summary and "met" in summary
    assert set(json.loads((out / "results.json").read_text())["targets"]) == {"ops", "model", "train"}
    assert main(["bench", "ops", "--out", str(tmp_path / "x"), "--lengths", "512,abc"]) == 2
    assert "--lengths" in capsys.readouterr().err
    assert main(["bench", "train", "--out", str(tmp_path / "x"), "--tiny-model", "--precisions", "fp16"]) == 2


# The single-token decode path (GLACore.decode_step) against the general one.


def _decode(model, ids, prefill, fast=True, monkeypatch=None):
    if not fast:
        monkeypatch.setattr(GLACore, "decodes_in_place", lambda self, attn, valid, cache: False)
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True) if prefill else None
        cache = output_cache(out) if out is not None else liger.LigerCache(model)
        logits = [out.logits] if out is not None else []
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t : t + 1], **{CACHE_KWARG: cache}, use_cache=True)
            logits.append(out.logits)
    if not fast:
        monkeypatch.undo()
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("mixer", ["gla", "hgrn2", "simple_gla", "retention"])
@pytest.mark.parametrize("window", [0, 2, 8])
@pytest.mark.parametrize("prefill", [0, 5])
def test_fast_decode_equals_the_core(mixer, window, prefill, monkeypatch):
    model = liger.linearize(tiny_model("qwen3"), liger.LigerConfig(mixer=mixer, window=window, learnable_mix=True,
                                                                   softmax_layers=(1,)))
    with torch.no_grad():  # per-head mixing weights away from their initial values
        for m in model.modules():
            if isinstance(getattr(m, "mix", None), torch.nn.Parameter):
                m.mix.uniform_(0.1, 1.0, generator=torch.Generator().manual_seed(7))
    ids = torch.randint(0, 128, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
    calls = []
    step = GLACore.decode_step
    monkeypatch.setattr(GLACore, "decode_step", lambda self, *a: calls.append(1) or step(self, *a))
    fast, cache = _decode(model, ids, prefill)
    assert len(calls) == (30 - prefill) * 2  # every step of both linearized layers took the fast path
    slow, _ = _decode(model, ids, prefill, fast=False, monkeypatch=monkeypatch)
    assert (fast - full).abs().max().item() <= 1e-4
    assert (fast - slow).abs().max().item() <= 1e-4
    layer = cache.layers[0]
    if window > 1:  # every decode step went through the ring (rotated in place)
        assert layer.ring_pos == (30 - prefill) % (window - 1)
        assert layer.window[0].shape == (2, window - 1, 2, 16)


def test_fast_decode_updates_in_place_and_keeps_the_window_in_order():
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(window=8))
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = output_cache(model(ids[:, :20], use_cache=True))
        layer = cache.layers[0]
        ptrs = (layer.state.data_ptr(), *(t.data_ptr() for t in layer.ring))
        nbytes = liger.cache_nbytes(cache)
        for t in range(20, 40):
            model(ids[:, t : t + 1], **{CACHE_KWARG: cache}, use_cache=True)
        assert (layer.state.data_ptr(), *(t.data_ptr() for t in layer.ring)) == ptrs  # no reallocation
        assert liger.cache_nbytes(cache) == nbytes and cache.get_seq_length() == 40
        assert layer.ring_pos == 20 % 7
        # the window in time order equals what the general path keeps: the last 7 keys (after RoPE) and values
        ref = output_cache(model(ids, use_cache=True)).layers[0].window
    for a, b in zip(layer.window, ref):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_decode_after_an_inference_mode_prefill():
    """A cache filled under torch.inference_mode (its tensors cannot be written in place outside it) still
    decodes under no_grad, through the general path."""
    model = liger.linearize(tiny_model("llama"), liger.LigerConfig(window=8))
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
    with torch.inference_mode():
        out = model(ids[:, :20], use_cache=True)
    logits = [out.logits]
    with torch.no_grad():
        for t in range(20, 24):
            out = model(ids[:, t : t + 1], **{CACHE_KWARG: output_cache(out)}, use_cache=True)
            logits.append(out.logits)
    assert (torch.cat(logits, 1) - full).abs().max().item() <= 1e-4


def test_bench_model_peer_is_skipped_with_the_reason(tmp_path, monkeypatch):
    """--peer llama.cpp: with the tiny model (no GGUF) the peer is skipped, and the results say why; without
    llama-cpp-python the reason names the install."""
    import sys

    from liger.bench.peer import peer_unavailable

    out = tmp_path / "model"
    assert main(["bench", "model", "--out", str(out), "--quick", "--tiny-model", "--contexts", "16",
                 "--decode-tokens", "2", "--peer", "llama.cpp"]) == 0
    payload, md = _read(out)
    assert payload["peer"]["name"] == "llama.cpp" and "--tiny-model" in payload["peer"]["skipped"]
    assert "## Peer: llama.cpp" in md and "Skipped:" in md
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    assert "pip install llama-cpp-python" in peer_unavailable()


def test_peer_targets_and_table():
    """The peer's rows become targets (faster than llama.cpp from 8K, within 2x below) and a table."""
    from liger.bench.model import model_targets
    from liger.bench.peer import peer_markdown

    rows = [{"model": m, "context": L, "batch": 1, "decode_ms": ms, "cache_bytes": 1, "prefill_s": 1.0}
            for m, L, ms in (("linearized", 512, 40.0), ("linearized", 8192, 40.0), ("original", 512, 30.0),
                             ("original", 8192, 90.0))]
    peer = {"name": "llama.cpp", "gguf": "/x/t.gguf", "version": "0", "threads": 2,
            "rows": [{"context": 512, "decode_ms": 10.0, "prefill_s": 1.0, "prefill_tokens_per_s": 512.0},
                     {"context": 8192, "decode_ms": 60.0, "prefill_s": 64.0, "prefill_tokens_per_s": 128.0}]}
    t = {r["target"].split(" (")[0]: r for r in model_targets({"rows": rows, "non_attention": [], "peer": peer})}
    fast = t["decode faster than llama.cpp running the teacher's GGUF at 8,192 context"]
    near = t["decode within 2x of llama.cpp running the teacher's GGUF at 512 context"]
    assert fast["measured"] == 1.5 and fast["met"] is True
    assert near["measured"] == 0.25 and near["met"] is False
    assert "| 8,192 | 64.00 | 128 | 60.0 |" in peer_markdown(peer)
