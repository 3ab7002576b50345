// XLA:CPU FFI custom calls for multi-head self-attention on oneDNN primitives.
//
// Both handlers read q, k and v straight out of the fused qkv projection,
// float32 [S, N, 3, H, d] (S sequences of N tokens, H heads of width d, the
// layout of jaxcnn's `qkv` Dense and of timm), through strided memory
// descriptors, so no head-major transpose is ever materialised:
//   jaxcnn_onednn_attention_fwd  out [S, N, H, d] = softmax(scale q k^T) v,
//                                probs [S, H, N, N] = the softmax (kept for the gradient)
//   jaxcnn_onednn_attention_bwd  dqkv [S, N, 3, H, d] from qkv, probs and dout [S, N, H, d]
// Attribute: scale (the logit scale, 1 / sqrt(d) for the usual attention).
//
// Each product is one batched oneDNN matmul over the (S, H) pairs; the
// softmax is oneDNN's softmax primitive, its gradient (p * (dp - sum(dp * p)))
// a threaded loop here. Primitives are built once per shape and cached.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Dims = memory::dims;
using jaxcnn_onednn::Engine;
using jaxcnn_onednn::Stream;
constexpr auto kF32 = memory::data_type::f32;

// The softmax gradient row by row, dlogits = p * (dp - sum(p * dp)), on up to all cores
// (oneDNN's softmax_backward has no vectorised AVX2 kernel: its reference one took 6x longer).
void SoftmaxGrad(const float* p, const float* dp, float* dlogits, int64_t rows, int64_t n) {
  auto run = [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *pr = p + r * n, *dpr = dp + r * n;
      float dot = 0.0f;
      for (int64_t i = 0; i < n; ++i) dot += pr[i] * dpr[i];
      float* out = dlogits + r * n;
      for (int64_t i = 0; i < n; ++i) out[i] = pr[i] * (dpr[i] - dot);
    }
  };
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(),
                                                                  rows * n / (1 << 16)));
  std::vector<std::thread> pool;
  const int64_t chunk = (rows + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(run, t * chunk, std::min(rows, (t + 1) * chunk));
  run(0, std::min(rows, chunk));
  for (auto& thread : pool) thread.join();
}

// Shapes and the strided views that the primitives read and write.
struct Shape {
  int64_t s, n, h, d;
  float scale;

  std::string Key() const {
    std::ostringstream k;
    k << s << ',' << n << ',' << h << ',' << d << ',' << scale;
    return k.str();
  }
  // One of q, k, v inside qkv [S, N, 3, H, d], viewed as [S, H, N, d] (transposed: [S, H, d, N]).
  memory::desc Qkv(bool transposed = false) const {
    const int64_t token = 3 * h * d;
    if (transposed) return memory::desc({s, h, d, n}, kF32, Dims{n * token, d, 1, token});
    return memory::desc({s, h, n, d}, kF32, Dims{n * token, d, token, 1});
  }
  // out / dout [S, N, H, d], viewed as [S, H, N, d] (transposed: [S, H, d, N]).
  memory::desc Tokens(bool transposed = false) const {
    if (transposed) return memory::desc({s, h, d, n}, kF32, Dims{n * h * d, d, 1, h * d});
    return memory::desc({s, h, n, d}, kF32, Dims{n * h * d, d, h * d, 1});
  }
  // probs [S, H, N, N] (transposed: the key-major view).
  memory::desc Probs(bool transposed = false) const {
    if (transposed) return memory::desc({s, h, n, n}, kF32, Dims{h * n * n, n * n, 1, n});
    return memory::desc({s, h, n, n}, kF32, Dims{h * n * n, n * n, n, 1});
  }
};

dnnl::matmul Matmul(const memory::desc& a, const memory::desc& b, const memory::desc& c, float scale) {
  dnnl::primitive_attr attr;
  if (scale != 1.0f) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_linear, scale, 0.0f);
    attr.set_post_ops(ops);
  }
  return dnnl::matmul(dnnl::matmul::primitive_desc(Engine(), a, b, c, attr));
}

struct Primitives {
  dnnl::matmul logits, weighted_sum;                        // q k^T (scaled), probs v
  dnnl::softmax_forward softmax;
  dnnl::matmul dprobs, dq, dk, dv;                          // dout v^T, dlogits k, dlogits^T q, probs^T dout
};

std::shared_ptr<Primitives> Build(const Shape& p) {
  auto prims = std::make_shared<Primitives>();
  const memory::desc probs = p.Probs();
  prims->logits = Matmul(p.Qkv(), p.Qkv(true), probs, p.scale);
  prims->weighted_sum = Matmul(probs, p.Qkv(), p.Tokens(), 1.0f);
  auto softmax_pd = dnnl::softmax_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::softmax_accurate, probs, probs, 3);
  prims->softmax = dnnl::softmax_forward(softmax_pd);
  prims->dprobs = Matmul(p.Tokens(), p.Qkv(true), probs, 1.0f);
  prims->dq = Matmul(probs, p.Qkv(), p.Qkv(), p.scale);
  prims->dk = Matmul(p.Probs(true), p.Qkv(), p.Qkv(), p.scale);
  prims->dv = Matmul(p.Probs(true), p.Tokens(), p.Qkv(), 1.0f);
  return prims;
}

std::shared_ptr<Primitives> Lookup(const Shape& p) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[p.Key()];
  if (!slot) slot = Build(p);
  return slot;
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error ReadShape(ffi::Span<const int64_t> qkv, float scale, Shape* p) {
  if (qkv.size() != 5 || qkv[2] != 3) {
    return ffi::Error::InvalidArgument("onednn attention: qkv must be [S, N, 3, H, d]");
  }
  *p = Shape{qkv[0], qkv[1], qkv[3], qkv[4], scale};
  return ffi::Error::Success();
}

memory At(const memory::desc& md, const float* data) {
  return memory(md, Engine(), const_cast<float*>(data));
}

ffi::Error AttentionFwd(F32 qkv, F32Out out, F32Out probs, float scale) {
  Shape p;
  if (auto err = ReadShape(qkv.dimensions(), scale, &p); err.failure()) return err;
  return jaxcnn_onednn::Guarded("onednn attention", [&] {
    auto prims = Lookup(p);
    const float* base = qkv.typed_data();
    const int64_t hd = p.h * p.d;
    memory q = At(p.Qkv(), base), kt = At(p.Qkv(true), base + hd), v = At(p.Qkv(), base + 2 * hd);
    memory weights = At(p.Probs(), probs->typed_data());
    auto& stream = Stream();
    prims->logits.execute(stream, {{DNNL_ARG_SRC, q}, {DNNL_ARG_WEIGHTS, kt}, {DNNL_ARG_DST, weights}});
    prims->softmax.execute(stream, {{DNNL_ARG_SRC, weights}, {DNNL_ARG_DST, weights}});
    prims->weighted_sum.execute(stream, {{DNNL_ARG_SRC, weights}, {DNNL_ARG_WEIGHTS, v},
                                         {DNNL_ARG_DST, At(p.Tokens(), out->typed_data())}});
    stream.wait();
  });
}

ffi::Error AttentionBwd(F32 qkv, F32 probs, F32 dout, F32Out dqkv, float scale) {
  Shape p;
  if (auto err = ReadShape(qkv.dimensions(), scale, &p); err.failure()) return err;
  return jaxcnn_onednn::Guarded("onednn attention", [&] {
    auto prims = Lookup(p);
    const float* base = qkv.typed_data();
    float* grad = dqkv->typed_data();
    const int64_t hd = p.h * p.d;
    // d probs, then d logits: two [S, H, N, N] buffers (oneDNN's fast softmax gradient is not in place).
    const int64_t size = p.s * p.h * p.n * p.n;
    thread_local std::vector<float> scratch;
    scratch.resize(2 * size);
    memory dprobs = At(p.Probs(), scratch.data()), dlogits = At(p.Probs(), scratch.data() + size);
    memory weights = At(p.Probs(), probs.typed_data());
    auto& stream = Stream();
    prims->dprobs.execute(stream, {{DNNL_ARG_SRC, At(p.Tokens(), dout.typed_data())},
                                   {DNNL_ARG_WEIGHTS, At(p.Qkv(true), base + 2 * hd)},
                                   {DNNL_ARG_DST, dprobs}});
    stream.wait();
    SoftmaxGrad(probs.typed_data(), scratch.data(), scratch.data() + size, p.s * p.h * p.n, p.n);
    prims->dq.execute(stream, {{DNNL_ARG_SRC, dlogits}, {DNNL_ARG_WEIGHTS, At(p.Qkv(), base + hd)},
                               {DNNL_ARG_DST, At(p.Qkv(), grad)}});
    prims->dk.execute(stream, {{DNNL_ARG_SRC, At(p.Probs(true), scratch.data() + size)},
                               {DNNL_ARG_WEIGHTS, At(p.Qkv(), base)}, {DNNL_ARG_DST, At(p.Qkv(), grad + hd)}});
    prims->dv.execute(stream, {{DNNL_ARG_SRC, At(p.Probs(true), probs.typed_data())},
                               {DNNL_ARG_WEIGHTS, At(p.Tokens(), dout.typed_data())},
                               {DNNL_ARG_DST, At(p.Qkv(), grad + 2 * hd)}});
    stream.wait();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_attention_fwd, AttentionFwd,
                              ffi::Ffi::Bind().Arg<F32>().Ret<F32>().Ret<F32>().Attr<float>("scale"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_attention_bwd, AttentionBwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>().Attr<float>("scale"));
