// The forward of liger.ops.chunk_gla without autograd (inference, prefill), CPU float32.
//
// Why hand-written: the PyTorch form of chunk_gla spends about as much time on memory-bound passes as on
// its matmuls: copies of q, k, v, g into the chunk layout [B, H, N, C, D] and of the output back to
// [B, T, Hq, V], and the decay scalings (cumsum, exp, multiplies), each one pass over the whole sequence
// (docs/PERFORMANCE.md). No maintained library fuses these on CPU (flash-linear-attention's kernels are
// Triton, CUDA only). Here each chunk's operands are built once, straight from the natural layout, in
// per-thread buffers that stay in cache, and go to the BLAS sgemm that torch itself links (MKL on x86).
//
// Math and numerical guarantees: those of chunk_gla's float32 route (liger/ops/gla.py). Per batch element
// b, key head h and chunk n of C tokens (Tn of them valid: the zero padding of the PyTorch form changes
// nothing, so it is skipped), with b_t the within-chunk cumulative sum of max(g, -gate_floor) (float32)
// and r its value at token C/2 - 1 (the last valid token if the chunk is shorter):
//   pass 1 (chunks in parallel): U_n = sum_s (k_s exp(b_last - b_s))^T v_s, exp(b_last), exp(r) and the
//     span max |b - r|; when a span exceeds max_span the op returns ok = false and chunk_gla runs its
//     PyTorch form (whose float64 route handles it). The thread completing a head's last chunk runs that
//     head's scan over chunks: S'_n = exp(r_n) S_n (stored in U_n's place), S_{n+1} = exp(b_last,n) S_n + U_n.
//   pass 2 (chunks in parallel, each once its head is scanned): q_r = scale q exp(b - r) (the G query heads
//     of the key head as G blocks of rows), k_r = k exp(r - b), A = tril(q_r k_r^T), and per query head
//     o = A v + q_r S'_n, written by sgemm straight into o [B, T, Hq, V].
// Both passes run in one parallel region (torch's intra-op threads), chunks handed out one at a time.
// Every exponent is within [-max_span, max_span] (factors up to e^40, products up to e^80 < float32's e^88)
// or <= 0, as in the PyTorch form.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <thread>
#include <tuple>
#include <vector>

// The BLAS sgemm torch calls (exported by libtorch_cpu). Weak: where a torch build does not export it the
// pointer is null and `gemm` goes through at::mm instead (slower, same result).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL's thread-local thread count (C interface; the lower-case name is the Fortran one, taking a pointer).
// torch calls mkl_set_dynamic(false), so MKL may run each of these small sgemm calls on all threads (nested
// inside our workers); measured without it, each call on 2 threads took 3x the CPU time in spin-waits. Our
// workers set it to 1 for the call and restore it.
extern "C" int MKL_Set_Num_Threads_Local(int nth) __attribute__((weak));

namespace {

// Row-major C[m, n] = op(A)[m, k] @ op(B)[k, n] + beta * C (beta 0 or 1); op transposes when ta / tb.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  if (sgemm_ != nullptr) {
    // Column-major BLAS sees each row-major matrix transposed: C^T = op(B)^T op(A)^T.
    const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    const float one = 1.0f;
    sgemm_(tb ? "T" : "N", ta ? "T" : "N", &mi, &ni, &ki, &one, B, &la, A, &lb, &beta, C, &lc);
    return;
  }
  auto opt = at::TensorOptions().dtype(at::kFloat);
  auto view = [&](const float* p, int64_t rows, int64_t cols, int64_t ld, bool t) {
    at::Tensor x = at::from_blob(const_cast<float*>(p), {t ? cols : rows, t ? rows : cols}, {ld, 1}, opt);
    return t ? x.t() : x;
  };
  at::Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opt);
  at::Tensor prod = at::mm(view(A, m, k, lda, ta), view(B, k, n, ldb, tb));
  if (beta == 0.0f) {
    c.copy_(prod);
  } else {
    c.add_(prod);
  }
}

// exp(x) in float32 (within 2 ulp), written so that the loops calling it vectorize (std::exp does not
// without -ffast-math). Cephes' expf: x = n ln2 + f with |f| <= ln2 / 2, exp(f) by a degree-6 polynomial,
// 2^n from the exponent bits. 0 below -87.3 (torch's exp gives denormals there, below 1e-38), inf above 88.7,
// NaN stays NaN.
inline float exp_f32(float x) {
  const float hi = 88.72283935546875f, lo = -87.33654022216797f;
  const float xc = std::min(std::max(x, lo), hi);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer (no SSE4.1 round needed)
  const float n = (xc * 1.44269504088896341f + shifter) - shifter;
  float f = xc - n * 0.693359375f;  // ln2 in two parts (Cody-Waite): the first product is exact
  f = f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  float y = p * two_n;
  y = x < lo ? 0.0f : y;
  y = x > hi ? INFINITY : y;
  return x != x ? x : y;
}

// bc[t, c] = sum_{s <= t} max(g[s, c], -floor) over the Tn tokens of a chunk (rows of g `sg` floats apart).
void cumulative_decay(const float* g, int64_t sg, int64_t Tn, int64_t K, float floor, float* bc) {
  for (int64_t c = 0; c < K; ++c) bc[c] = std::max(g[c], -floor);
  for (int64_t t = 1; t < Tn; ++t) {
    const float* gt = g + t * sg;
    const float* prev = bc + (t - 1) * K;
    float* cur = bc + t * K;
    for (int64_t c = 0; c < K; ++c) cur[c] = prev[c] + std::max(gt[c], -floor);
  }
}

// Prefetch `rows` rows of `bytes` bytes, `stride` floats apart: the next chunk's inputs load while this
// chunk's matmuls run (rows of [B, T, H, D] inputs are H * D floats apart: a strided stream).
void prefetch_rows(const float* p, int64_t rows, int64_t stride, int64_t bytes) {
  for (int64_t t = 0; t < rows; ++t) {
    const char* row = reinterpret_cast<const char*>(p + t * stride);
    for (int64_t x = 0; x < bytes; x += 64) __builtin_prefetch(row + x);
  }
}

// Wait for another thread's store of true into `flag`: a short spin, then (C++20) asleep until notified. A
// sleeping waiter frees its core, so that on a busy machine the scheduler can move there the descheduled
// thread it waits for (a waiter spinning or yielding keeps it).
void wait_until_set(const std::atomic<bool>& flag) {
  for (int i = 0; i < 256; ++i) {
    if (flag.load(std::memory_order_acquire)) return;
    std::this_thread::yield();
  }
#if defined(__cpp_lib_atomic_wait)
  while (!flag.load(std::memory_order_acquire)) flag.wait(false, std::memory_order_acquire);
#else
  while (!flag.load(std::memory_order_acquire)) std::this_thread::yield();
#endif
}

// Strides of a [B, T, H, D] input (D contiguous).
struct Strides {
  int64_t b, t, h;
  explicit Strides(const at::Tensor& x) : b(x.stride(0)), t(x.stride(1)), h(x.stride(2)) {}
};

// Per-thread buffers (allocated once per call and thread; a chunk's fit in L2 for C = K = V = 64, G = 3).
struct Scratch {
  std::vector<float> bc, kbuf, wide, X, E, Ei;
};

std::tuple<at::Tensor, at::Tensor, bool> chunk_gla_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& g, double scale_d,
                                                       const std::optional<at::Tensor>& initial_state, int64_t chunk,
                                                       double max_span_d, double gate_floor_d) {
  for (const at::Tensor* x : {&q, &k, &v, &g}) {
    TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == at::kFloat && x->dim() == 4 && x->stride(3) == 1,
                "chunk_gla_fwd: q, k, v, g must be CPU float32 [B, T, H, D] with D contiguous");
  }
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), K = q.size(3), Hk = k.size(2), V = v.size(3);
  TORCH_CHECK(Hk > 0 && Hq % Hk == 0 && k.size(0) == B && k.size(1) == T && k.size(3) == K && v.size(0) == B &&
                  v.size(1) == T && v.size(2) == Hk && g.sizes() == k.sizes() && T > 0 && chunk >= 2,
              "chunk_gla_fwd: shape mismatch");
  const int64_t G = Hq / Hk, C = chunk, N = (T + C - 1) / C, BH = B * Hk, items = BH * N;
  const float scale = static_cast<float>(scale_d), max_span = static_cast<float>(max_span_d);
  const float floor = static_cast<float>(gate_floor_d);
  const auto opt = q.options();

  at::Tensor state = at::empty({B, Hk, K, V}, opt);
  if (initial_state.has_value()) {
    TORCH_CHECK(initial_state->sizes() == state.sizes(), "chunk_gla_fwd: initial_state must be [B, Hk, K, V]");
    state.copy_(*initial_state);
  } else {
    state.zero_();
  }
  // U [BH, N, K, V]: per chunk k_out^T v, then (the scan) the state entering the chunk times exp(r);
  // decay = exp(b_last), er = exp(r) [BH, N, K]
  at::Tensor U = at::empty({BH, N, K, V}, opt);
  at::Tensor decay = at::empty({BH, N, K}, opt), er = at::empty({BH, N, K}, opt);
  at::Tensor o = at::empty({B, T, Hq, V}, opt);

  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float *Up = U.data_ptr<float>(), *dp = decay.data_ptr<float>(), *erp = er.data_ptr<float>();
  float *op = o.data_ptr<float>(), *sp = state.data_ptr<float>();
  const Strides sq(q), sk(k), sv(v), sg(g);

  std::atomic<bool> too_wide{false};
  std::vector<std::atomic<int64_t>> chunks_done(BH);
  std::vector<std::atomic<bool>> scanned(BH);
  for (int64_t i = 0; i < BH; ++i) chunks_done[i].store(0), scanned[i].store(false);

  // Work item i < items: pass 1 of chunk i; i >= items: pass 2 of chunk i - items. Chunks in the order
  // (b, n, h): the key heads of one chunk share the cache lines of q and o.
  auto where = [&](int64_t item, int64_t& b, int64_t& n, int64_t& h) {
    h = item % Hk;
    n = (item / Hk) % N;
    b = item / (Hk * N);
  };

  auto scan = [&](int64_t bh) {
    for (int64_t c = 0; c < K; ++c) {  // each row of the [K, V] state on its own
      float* S = sp + (bh * K + c) * V;
      for (int64_t n = 0; n < N; ++n) {
        float* u = Up + ((bh * N + n) * K + c) * V;
        const float d = dp[(bh * N + n) * K + c], e = erp[(bh * N + n) * K + c];
        for (int64_t j = 0; j < V; ++j) {
          const float un = u[j];
          u[j] = S[j] * e;
          S[j] = d * S[j] + un;
        }
      }
    }
  };

  auto pass1 = [&](int64_t item, Scratch& w) {
    int64_t b, n, h;
    where(item, b, n, h);
    const int64_t bh = b * Hk + h, at = bh * N + n, t0 = n * C, Tn = std::min(C, T - t0);
    if (item + 1 < items) {
      int64_t b2, n2, h2;
      where(item + 1, b2, n2, h2);
      const int64_t t2 = n2 * C, rows = std::min(C, T - t2);
      prefetch_rows(kp + b2 * sk.b + t2 * sk.t + h2 * sk.h, rows, sk.t, K * 4);
      prefetch_rows(gp + b2 * sg.b + t2 * sg.t + h2 * sg.h, rows, sg.t, K * 4);
      prefetch_rows(vp + b2 * sv.b + t2 * sv.t + h2 * sv.h, rows, sv.t, V * 4);
    }
    float *bc = w.bc.data(), *wide = w.wide.data(), *kout = w.kbuf.data();
    cumulative_decay(gp + b * sg.b + t0 * sg.t + h * sg.h, sg.t, Tn, K, floor, bc);
    const float* r = bc + std::min(C / 2 - 1, Tn - 1) * K;
    const float* last = bc + (Tn - 1) * K;
    std::fill(wide, wide + K, 0.0f);  // the span per channel first (one running max does not vectorize)
    for (int64_t t = 0; t < Tn; ++t) {
      const float* bt = bc + t * K;
      for (int64_t c = 0; c < K; ++c) wide[c] = std::max(wide[c], std::abs(bt[c] - r[c]));
    }
    // (a NaN gate compares false here, as in the PyTorch form's check)
    if (*std::max_element(wide, wide + K) > max_span) too_wide.store(true, std::memory_order_relaxed);
    const float* kc = kp + b * sk.b + t0 * sk.t + h * sk.h;
    for (int64_t t = 0; t < Tn; ++t) {
      const float *bt = bc + t * K, *kt = kc + t * sk.t;
      float* ot = kout + t * K;
      for (int64_t c = 0; c < K; ++c) ot[c] = kt[c] * exp_f32(last[c] - bt[c]);  // exponent <= 0
    }
    gemm(true, false, K, V, Tn, kout, K, vp + b * sv.b + t0 * sv.t + h * sv.h, sv.t, 0.0f, Up + at * K * V, V);
    for (int64_t c = 0; c < K; ++c) {
      dp[at * K + c] = exp_f32(last[c]);
      erp[at * K + c] = exp_f32(r[c]);
    }
  };

  // After pass 1 of a chunk (also when it threw: the waiters must not hang), the thread completing its
  // head's last chunk runs the head's scan.
  auto chunk_done = [&](int64_t item) {
    int64_t b, n, h;
    where(item, b, n, h);
    const int64_t bh = b * Hk + h;
    if (chunks_done[bh].fetch_add(1, std::memory_order_acq_rel) + 1 != N) return;
    scan(bh);
    scanned[bh].store(true, std::memory_order_release);
#if defined(__cpp_lib_atomic_wait)
    scanned[bh].notify_all();
#endif
  };

  auto pass2 = [&](int64_t item, Scratch& w) {
    int64_t b, n, h;
    where(item, b, n, h);
    const int64_t bh = b * Hk + h, at = bh * N + n, t0 = n * C, Tn = std::min(C, T - t0), ldx = Tn + K;
    if (item + 1 < items) {
      int64_t b2, n2, h2;
      where(item + 1, b2, n2, h2);
      const int64_t t2 = n2 * C, rows = std::min(C, T - t2);
      prefetch_rows(qp + b2 * sq.b + t2 * sq.t + h2 * G * sq.h, rows, sq.t, G * K * 4);
      prefetch_rows(kp + b2 * sk.b + t2 * sk.t + h2 * sk.h, rows, sk.t, K * 4);
      prefetch_rows(gp + b2 * sg.b + t2 * sg.t + h2 * sg.h, rows, sg.t, K * 4);
    }
    // X [G * Tn, Tn + K]: row gi * Tn + t holds [A_t (Tn scores) | q_r,t (K)] of query head h * G + gi
    float *bc = w.bc.data(), *X = w.X.data(), *kr = w.kbuf.data(), *E = w.E.data(), *Ei = w.Ei.data();
    cumulative_decay(gp + b * sg.b + t0 * sg.t + h * sg.h, sg.t, Tn, K, floor, bc);
    const float* r = bc + std::min(C / 2 - 1, Tn - 1) * K;
    const float* qc = qp + b * sq.b + t0 * sq.t + h * G * sq.h;
    const float* kc = kp + b * sk.b + t0 * sk.t + h * sk.h;
    for (int64_t t = 0; t < Tn; ++t) {
      const float* bt = bc + t * K;
      for (int64_t c = 0; c < K; ++c) {
        const float d = bt[c] - r[c];
        E[c] = exp_f32(d) * scale;
        Ei[c] = exp_f32(-d);  // k exp(r - b), not k / exp(b - r), as the PyTorch form
      }
      for (int64_t gi = 0; gi < G; ++gi) {
        const float* qt = qc + t * sq.t + gi * sq.h;
        float* xr = X + (gi * Tn + t) * ldx + Tn;
        for (int64_t c = 0; c < K; ++c) xr[c] = qt[c] * E[c];
      }
      const float *kt = kc + t * sk.t;
      float* krt = kr + t * K;
      for (int64_t c = 0; c < K; ++c) krt[c] = kt[c] * Ei[c];
    }
    // A = q_r k_r^T for all G heads at once, then causal: zero where s > t (overwritten, never multiplied)
    gemm(false, true, G * Tn, Tn, K, X + Tn, ldx, kr, K, 0.0f, X, ldx);
    for (int64_t gi = 0; gi < G; ++gi) {
      for (int64_t t = 0; t < Tn; ++t) {
        float* row = X + (gi * Tn + t) * ldx;
        std::fill(row + t + 1, row + Tn, 0.0f);
      }
    }
    const float* vc = vp + b * sv.b + t0 * sv.t + h * sv.h;
    const float* S = Up + at * K * V;
    for (int64_t gi = 0; gi < G; ++gi) {  // query head h * G + gi: Tn rows of o, Hq * V floats apart
      float* oc = op + ((b * T + t0) * Hq + h * G + gi) * V;
      gemm(false, false, Tn, V, Tn, X + gi * Tn * ldx, ldx, vc, sv.t, 0.0f, oc, Hq * V);
      gemm(false, false, Tn, V, K, X + gi * Tn * ldx + Tn, ldx, S, V, 1.0f, oc, Hq * V);
    }
  };

  // One parallel region, items handed out one at a time from a shared counter (a descheduled thread on a
  // busy machine holds up one item, not a fixed share): first every chunk's pass 1, then every pass 2,
  // each waiting for its head's scan (which needs only pass-1 items, all handed out before: no deadlock).
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch w;
    w.bc.resize(C * K), w.kbuf.resize(C * K), w.wide.resize(K), w.E.resize(K), w.Ei.resize(K);
    w.X.resize(G * C * (C + K));
    const int mkl_threads = MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0;
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < 2 * items;) {
      try {
        if (i < items) {
          pass1(i, w);
        } else if (!too_wide.load(std::memory_order_relaxed) && !failed.load(std::memory_order_relaxed)) {
          int64_t b, n, h;  // (with too_wide the result is discarded: the work is skipped)
          where(i - items, b, n, h);
          wait_until_set(scanned[b * Hk + h]);
          pass2(i - items, w);
        }
      } catch (...) {  // (at::mm, without BLAS, may throw): kept, rethrown once every thread is done
        if (!failed.exchange(true)) error = std::current_exception();
      }
      if (i < items) chunk_done(i);
    }
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(mkl_threads);  // 0: back to global
  });
  if (error) std::rethrow_exception(error);
  if (too_wide.load()) return {at::Tensor(), at::Tensor(), false};
  return {o, state, true};
}

}  // namespace

TORCH_LIBRARY(liger_gla, m) {
  m.def(
      "chunk_gla_fwd(Tensor q, Tensor k, Tensor v, Tensor g, float scale, Tensor? initial_state, int chunk, "
      "float max_span, float gate_floor) -> (Tensor, Tensor, bool)");
}

TORCH_LIBRARY_IMPL(liger_gla, CPU, m) { m.impl("chunk_gla_fwd", &chunk_gla_fwd); }
