// XLA:CPU FFI custom calls to oneDNN's 2-D convolution primitives.
//
// Three handlers, all float32 with NHWC activations and HWIO kernels (the
// layout of jaxcnn's convolutions), so no layout change crosses the call:
//   jaxcnn_onednn_conv_fwd          y  = conv(x, w)
//   jaxcnn_onednn_conv_bwd_data     dx = d conv / dx contracted with dy
//   jaxcnn_onednn_conv_bwd_weights  dw = d conv / dw contracted with dy
// Attributes: strides, pads_low, pads_high, dilation (2 values each, the
// dilation as in lax: 1 = dense) and groups. Grouped kernels are HWIO with
// O = groups * (O / groups), which is oneDNN's `hwigo`.
//
// oneDNN chooses its own blocked kernel layout (`format_tag::any`, what
// PyTorch does too); the HWIO kernel is reordered into it on every call
// (kernels are small next to activations). Primitives are built once per
// problem and cached, as building one generates code.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxcnn_onednn {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

}  // namespace jaxcnn_onednn

namespace {

using jaxcnn_onednn::Engine;
using jaxcnn_onednn::Stream;

using dnnl::memory;
using Tag = memory::format_tag;

// The geometry of one convolution, read from the operand shapes and attributes.
struct Problem {
  int64_t n, h, w, c;            // input, NHWC
  int64_t kh, kw, ci, co;        // kernel, HWIO (ci = c / groups)
  int64_t oh, ow;                // output spatial size
  int64_t groups;
  memory::dims strides, pad_low, pad_high, dilation;  // dilation in oneDNN's convention (0 = dense)

  std::string Key() const {
    std::ostringstream s;
    s << n << ',' << h << ',' << w << ',' << c << ',' << kh << ',' << kw << ',' << ci << ',' << co << ','
      << oh << ',' << ow << ',' << groups;
    for (const auto* v : {&strides, &pad_low, &pad_high, &dilation}) s << ';' << (*v)[0] << ',' << (*v)[1];
    return s.str();
  }
  memory::desc Src() const { return memory::desc({n, c, h, w}, memory::data_type::f32, Tag::nhwc); }
  memory::desc Dst() const { return memory::desc({n, co, oh, ow}, memory::data_type::f32, Tag::nhwc); }
  memory::desc Weights(Tag tag) const {
    if (groups == 1) return memory::desc({co, ci, kh, kw}, memory::data_type::f32, tag == Tag::any ? tag : Tag::hwio);
    return memory::desc({groups, co / groups, ci, kh, kw}, memory::data_type::f32,
                        tag == Tag::any ? tag : Tag::hwigo);
  }
};

// Built primitives of one problem: the three convolutions and the kernel reorders they need.
struct Primitives {
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
  memory::desc fwd_weights, bwd_data_weights, bwd_diff_weights;  // oneDNN's chosen kernel layouts
  dnnl::reorder to_fwd, to_bwd_data, from_bwd_weights;           // empty when no reorder is needed
};

dnnl::reorder MaybeReorder(const memory::desc& from, const memory::desc& to) {
  if (from == to) return dnnl::reorder();
  return dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
}

std::shared_ptr<Primitives> Build(const Problem& p) {
  const dnnl::engine& eng = Engine();
  const auto algo = dnnl::algorithm::convolution_direct;
  const memory::desc src = p.Src(), dst = p.Dst(), any = p.Weights(Tag::any), user = p.Weights(Tag::hwio);
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, algo, src, any, dst, p.strides, p.dilation, p.pad_low,
      p.pad_high);
  auto bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      eng, algo, src, any, dst, p.strides, p.dilation, p.pad_low, p.pad_high, fwd_pd);
  auto bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      eng, algo, src, any, dst, p.strides, p.dilation, p.pad_low, p.pad_high, fwd_pd);
  auto prims = std::make_shared<Primitives>();
  prims->fwd = dnnl::convolution_forward(fwd_pd);
  prims->bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
  prims->bwd_weights = dnnl::convolution_backward_weights(bwd_weights_pd);
  prims->fwd_weights = fwd_pd.weights_desc();
  prims->bwd_data_weights = bwd_data_pd.weights_desc();
  prims->bwd_diff_weights = bwd_weights_pd.diff_weights_desc();
  prims->to_fwd = MaybeReorder(user, prims->fwd_weights);
  prims->to_bwd_data = MaybeReorder(user, prims->bwd_data_weights);
  prims->from_bwd_weights = MaybeReorder(prims->bwd_diff_weights, user);
  return prims;
}

std::shared_ptr<Primitives> Lookup(const Problem& p) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<Primitives>> cache;
  const std::string key = p.Key();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto prims = Build(p);
  cache.emplace(key, prims);
  return prims;
}

ffi::Error ReadProblem(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> w_dims,
                       ffi::Span<const int64_t> y_dims, ffi::Span<const int64_t> strides,
                       ffi::Span<const int64_t> pads_low, ffi::Span<const int64_t> pads_high,
                       ffi::Span<const int64_t> dilation, int64_t groups, Problem* p) {
  if (x_dims.size() != 4 || w_dims.size() != 4 || y_dims.size() != 4 || strides.size() != 2 ||
      pads_low.size() != 2 || pads_high.size() != 2 || dilation.size() != 2 || groups < 1) {
    return ffi::Error::InvalidArgument("onednn conv: expected NHWC/HWIO operands and 2-D attributes");
  }
  *p = Problem{x_dims[0], x_dims[1], x_dims[2], x_dims[3], w_dims[0], w_dims[1], w_dims[2], w_dims[3],
               y_dims[1], y_dims[2], groups,
               {strides[0], strides[1]}, {pads_low[0], pads_low[1]}, {pads_high[0], pads_high[1]},
               {dilation[0] - 1, dilation[1] - 1}};
  return ffi::Error::Success();
}

memory Wrap(const memory::desc& md, void* data) { return memory(md, Engine(), data); }

// The kernel in the layout `prim` wants: the user's buffer itself, or a reordered copy.
memory KernelFor(const dnnl::reorder& to, const memory::desc& wanted, memory user) {
  if (!to) return user;
  memory copy(wanted, Engine());
  to.execute(Stream(), user, copy);
  return copy;
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
using Dims = ffi::Span<const int64_t>;

ffi::Error ConvFwd(F32 x, F32 w, F32Out y, Dims strides, Dims pads_low, Dims pads_high, Dims dilation,
                   int64_t groups) {
  Problem p;
  if (auto err = ReadProblem(x.dimensions(), w.dimensions(), y->dimensions(), strides, pads_low, pads_high,
                             dilation, groups, &p); err.failure()) {
    return err;
  }
  return jaxcnn_onednn::Guarded("onednn conv", [&] {
    auto prims = Lookup(p);
    memory kernel = KernelFor(prims->to_fwd, prims->fwd_weights, Wrap(p.Weights(Tag::hwio), w.typed_data()));
    prims->fwd.execute(Stream(), {{DNNL_ARG_SRC, Wrap(p.Src(), x.typed_data())},
                                  {DNNL_ARG_WEIGHTS, kernel},
                                  {DNNL_ARG_DST, Wrap(p.Dst(), y->typed_data())}});
    Stream().wait();
  });
}

ffi::Error ConvBwdData(F32 dy, F32 w, F32Out dx, Dims strides, Dims pads_low, Dims pads_high, Dims dilation,
                       int64_t groups) {
  Problem p;
  if (auto err = ReadProblem(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, pads_low, pads_high,
                             dilation, groups, &p); err.failure()) {
    return err;
  }
  return jaxcnn_onednn::Guarded("onednn conv", [&] {
    auto prims = Lookup(p);
    memory kernel = KernelFor(prims->to_bwd_data, prims->bwd_data_weights,
                              Wrap(p.Weights(Tag::hwio), w.typed_data()));
    prims->bwd_data.execute(Stream(), {{DNNL_ARG_DIFF_DST, Wrap(p.Dst(), dy.typed_data())},
                                       {DNNL_ARG_WEIGHTS, kernel},
                                       {DNNL_ARG_DIFF_SRC, Wrap(p.Src(), dx->typed_data())}});
    Stream().wait();
  });
}

ffi::Error ConvBwdWeights(F32 x, F32 dy, F32Out dw, Dims strides, Dims pads_low, Dims pads_high,
                          Dims dilation, int64_t groups) {
  Problem p;
  if (auto err = ReadProblem(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, pads_low, pads_high,
                             dilation, groups, &p); err.failure()) {
    return err;
  }
  return jaxcnn_onednn::Guarded("onednn conv", [&] {
    auto prims = Lookup(p);
    memory user = Wrap(p.Weights(Tag::hwio), dw->typed_data());
    memory diff = prims->from_bwd_weights ? memory(prims->bwd_diff_weights, Engine()) : user;
    prims->bwd_weights.execute(Stream(), {{DNNL_ARG_SRC, Wrap(p.Src(), x.typed_data())},
                                          {DNNL_ARG_DIFF_DST, Wrap(p.Dst(), dy.typed_data())},
                                          {DNNL_ARG_DIFF_WEIGHTS, diff}});
    if (prims->from_bwd_weights) prims->from_bwd_weights.execute(Stream(), diff, user);
    Stream().wait();
  });
}

}  // namespace

#define JAXCNN_CONV_BINDING \
  ffi::Ffi::Bind()                                                                           \
      .Arg<F32>()                                                                            \
      .Arg<F32>()                                                                            \
      .Ret<F32>()                                                                            \
      .Attr<Dims>("strides")                                                                 \
      .Attr<Dims>("pads_low")                                                                \
      .Attr<Dims>("pads_high")                                                               \
      .Attr<Dims>("dilation")                                                                \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_conv_fwd, ConvFwd, JAXCNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_conv_bwd_data, ConvBwdData, JAXCNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_conv_bwd_weights, ConvBwdWeights, JAXCNN_CONV_BINDING);

// 1 when a oneDNN CPU engine can be created in this process, else 0 (called once from Python
// before any handler is registered, so a broken runtime falls back instead of failing a step).
extern "C" int jaxcnn_onednn_probe() {
  try {
    jaxcnn_onednn::Engine();
    jaxcnn_onednn::Stream();
    return 1;
  } catch (...) {
    return 0;
  }
}
