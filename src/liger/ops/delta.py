"""Gated DeltaNet (Yang et al. 2024, arXiv 2412.06464): the delta rule with a scalar decay per head and token.

Recurrence, per batch element and key/value head (natural-log decay g <= 0, write strength beta)::

    S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t        S: [K, V], float32
    o_t = scale * q_t S_t

(the transpose of the paper's S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T). Equivalently:
decay the state, read the old value at k_t, and move it a fraction beta_t towards v_t.

Keys are expected L2-normalised by the caller (then I - beta k^T k is a contraction for beta in [0, 2],
and the state stays bounded); pass `use_qk_l2norm_in_kernel=True` to normalise q and k here instead, as in
flash-linear-attention. beta may lie in [0, 2] (beta > 1 gives the negative eigenvalues of "DeltaNet with
negative eigenvalues": the caller computes e.g. 2 * sigmoid(x)).

Layout time-first: q [B, T, Hq, K], k [B, T, Hk, K], v [B, T, Hk, V], g and beta [B, T, Hk]; states float32
[B, Hk, K, V]. Grouped-query heads: Hq = G * Hk, query head h reads head h // G. Any float dtype in;
float32 arithmetic; o in v's dtype.

Input contract (both ops; as `liger.ops.gla`'s): g <= 0 and beta in [0, 2], else ValueError naming the op,
the input, the value and its index; a NaN/inf in any input reaches no earlier output (k, v, g and beta are
checked: a non-finite value there, -inf gates included, makes NaN every output of its head from its position
on and the final state; see `liger.ops.common.check_values`); T = 0 gives an empty o and the initial state.
`check_inputs=False` skips the value check (one reduction per checked input, one host sync). Unit keys are
expected, not checked (a norm per token would cost a pass of its own): with other keys both forms still
compute the same recurrence, only its boundedness is lost.
"""

from __future__ import annotations

import torch

from .common import (check_qkv, check_shape, check_values, chunk_len, empty_result, float32_op, from_chunks, prepare,
                     recurrent_outputs, scalar_decays, to_chunks)

Tensor = torch.Tensor


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(sum(x^2) + eps) over the last axis, in float32 (flash-linear-attention's l2norm)."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def _checked(name: str, op, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float | None,
             initial_state: Tensor | None, output_final_state: bool, use_qk_l2norm_in_kernel: bool,
             check_inputs: bool, **kw):
    """The input contract shared by both ops: shapes, T = 0, then the value check; None when `op` should run."""
    check_qkv(q, k, v, initial_state)
    check_shape("g", g, k.shape[:3])
    check_shape("beta", beta, k.shape[:3])
    B, T, Hq, K = q.shape
    if T == 0:
        return empty_result((B, 0, Hq, v.shape[-1]), v, initial_state, (B, k.shape[2], K, v.shape[-1]),
                            output_final_state)
    if check_inputs and (bad := check_values(name, q, {"k": k, "v": v}, {"g": g}, beta)):
        k, v, g, beta = bad.inputs
        return bad.poison(*op(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                              check_inputs=False, **kw))
    return None


def _prepare(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float | None, initial_state: Tensor | None,
    use_qk_l2norm_in_kernel: bool,
) -> tuple[int, Tensor, Tensor, float, Tensor]:
    """Validate; return G, q and k (L2-normalised if asked), the scale and the float32 starting state."""
    G, scale, S = prepare(q, k, v, scale, initial_state)
    check_shape("g", g, k.shape[:3])
    check_shape("beta", beta, k.shape[:3])
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    return G, q, k, scale, S


@float32_op
def fused_recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    *,
    check_inputs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token gated delta rule (decode path); same signature, input contract and result as
    `chunk_gated_delta_rule`."""
    done = _checked("fused_recurrent_gated_delta_rule", fused_recurrent_gated_delta_rule, q, k, v, g, beta, scale,
                    initial_state, output_final_state, use_qk_l2norm_in_kernel, check_inputs)
    if done is not None:
        return done
    _, q, k, scale, S = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    kf, vf, bf, decay = k.float(), v.float(), beta.float(), g.float().exp()

    def step(S: Tensor, t: int) -> Tensor:
        S = S * decay[:, t, :, None, None]
        kt = kf[:, t]  # [B, Hk, K]
        u = bf[:, t, :, None] * (vf[:, t] - torch.matmul(kt.unsqueeze(-2), S).squeeze(-2))  # [B, Hk, V]
        return S + kt.unsqueeze(-1) * u.unsqueeze(-2)

    o, S = recurrent_outputs(q.float(), S, step)
    return (o * scale).to(v.dtype), (S if output_final_state else None)


@float32_op
def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = 64,
    *,
    check_inputs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise-parallel gated delta rule: o [B, T, Hq, V] (v's dtype) and, if asked, the final state
    float32 [B, Hk, K, V]. Input contract: the module docstring's.

    Inside a chunk entered with state S0, with b the within-chunk cumulative log decay and
    D[t, s] = exp(b_t - b_s) (s <= t), the state is S_t = exp(b_t) S0 + sum_{s<=t} D[t, s] k_s^T u_s, where
    the written values u_t = beta_t (v_t - k_t (exp(g_t) S_{t-1})) solve the unit lower-triangular system
    (I + L) u = beta v - beta exp(b) k S0, L[t, s] = beta_t D[t, s] (k_t.k_s) for s < t (the UT transform).
    One batched triangular solve for all chunks gives u = U0 - W S0 (WY form). A loop over chunks carries
    the state, u = U0 - W S_n and S_{n+1} = exp(b_C) S_n + k_out^T u with k_out = k_s exp(b_C - b_s); then
    all outputs o_t = scale (exp(b_t) q_t S0 + sum_{s<=t} D[t, s] (q_t.k_s) u_s) are batched matmuls.
    Every exponent is <= 0 (differences of float64 cumulative sums), so any g <= 0 is safe, and with unit
    keys and beta in [0, 2] the transitions are contractions, so any T is too.
    """
    done = _checked("chunk_gated_delta_rule", chunk_gated_delta_rule, q, k, v, g, beta, scale, initial_state,
                    output_final_state, use_qk_l2norm_in_kernel, check_inputs, chunk_size=chunk_size)
    if done is not None:
        return done
    G, q, k, scale, S = _prepare(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    T, K = q.shape[1], q.shape[3]
    C = chunk_len(T, chunk_size)
    qc = to_chunks(q, C, groups=G)  # [B, Hk, N, G, C, K]
    kc, vc = to_chunks(k, C), to_chunks(v, C)  # [B, Hk, N, C, D]
    bc = to_chunks(beta, C).unsqueeze(-1)  # [B, Hk, N, C, 1]
    b, D = scalar_decays(to_chunks(g, C))  # [B, Hk, N, C], [B, Hk, N, C, C]
    b_last = b[..., -1:]
    gamma = b.exp().float().unsqueeze(-1)  # exp(b_t) [B, Hk, N, C, 1]

    # UT transform: U0 = (I + L)^-1 beta v, W = (I + L)^-1 beta exp(b) k.
    L = (bc * torch.matmul(kc, kc.transpose(-1, -2)) * D).tril(-1)
    rhs = torch.cat([bc * vc, (bc * gamma) * kc], -1)
    # (solved transposed, rhs^T (I + L)^-T: LAPACK's column-major layout makes that twice as fast)
    X = torch.linalg.solve_triangular(L.mT, rhs.mT, upper=True, left=False, unitriangular=True).mT
    U0, W = X.split([vc.shape[-1], K], -1)

    # Between chunks (a loop over chunks): u = U0 - W S_n, S_{n+1} = exp(b_C) S_n + k_out^T u.
    k_out = (kc * (b_last - b).exp().float().unsqueeze(-1)).transpose(-1, -2)  # k_s exp(b_C - b_s) [.., K, C]
    decay = b_last.exp().float().unsqueeze(-1)  # [B, Hk, N, 1, 1]
    entering, written = [], []
    # (unbind, not indexing: see scan_chunks)
    for U0_n, W_n, k_n, decay_n in zip(U0.unbind(2), W.unbind(2), k_out.unbind(2), decay.unbind(2)):
        entering.append(S)
        written.append(U0_n - torch.matmul(W_n, S))
        S = decay_n * S + torch.matmul(k_n, written[-1])
    S_in, U = torch.stack(entering, 2), torch.stack(written, 2)  # [B, Hk, N, K, V], [B, Hk, N, C, V]

    # Outputs.
    A = torch.matmul(qc, kc.unsqueeze(3).transpose(-1, -2)) * D.unsqueeze(3)  # [B, Hk, N, G, C, C]
    o = torch.matmul(A, U.unsqueeze(3))
    o = o + torch.matmul((qc * gamma.unsqueeze(3)).flatten(3, 4), S_in).view(o.shape)
    return from_chunks(o * scale, T).to(v.dtype), (S if output_final_state else None)
