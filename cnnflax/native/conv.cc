// 2-D convolutions (NHWC activations, HWIO kernels, one group) on oneDNN,
// exposed to XLA:CPU as three FFI handlers: forward, backward-data and
// backward-weights. cnnflax/native/__init__.py builds this file on first use
// and wraps the three calls in a custom VJP.
//
// Why: on small-channel CNNs XLA:CPU's own convolutions run 1.6-3x slower
// than oneDNN's (issue 8). Activations stay NHWC (no reorders); kernels are
// reordered from HWIO to the layout the chosen oneDNN kernel wants, which
// costs little because kernels are small.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Shapes, strides and padding of one convolution.
struct Geometry {
  int64_t n, h, w, c;  // input, NHWC
  int64_t kh, kw, o;   // kernel, HWIO with I == c
  int64_t oh, ow;      // output
  int64_t sh, sw, pt, pl, pb, pr;
  memory::data_type type;

  auto Key() const {
    return std::make_tuple(n, h, w, c, kh, kw, o, sh, sw, pt, pl, pb, pr,
                           static_cast<int>(type));
  }
  memory::desc Src() const { return {{n, c, h, w}, type, Tag::nhwc}; }
  memory::desc Dst() const { return {{n, o, oh, ow}, type, Tag::nhwc}; }
  memory::desc Kernel(Tag tag) const { return {{o, c, kh, kw}, type, tag}; }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims PadLo() const { return {pt, pl}; }
  memory::dims PadHi() const { return {pb, pr}; }
};

// The three primitives of one geometry, with the layouts they want for the
// kernel. Scratchpads are the caller's (user mode): XLA runs each device's
// program on its own thread, and library-managed scratchpads are shared.
struct Plan {
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
  memory::desc fwd_kernel, bwd_data_kernel, bwd_weights_kernel;
  memory::desc fwd_scratch, bwd_data_scratch, bwd_weights_scratch;

  explicit Plan(const Geometry& g) {
    auto algo = dnnl::algorithm::convolution_direct;
    auto any = g.Kernel(Tag::any);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::convolution_forward::primitive_desc fwd_pd(
        Engine(), dnnl::prop_kind::forward_training, algo, g.Src(), any,
        g.Dst(), g.Strides(), g.PadLo(), g.PadHi(), attr);
    dnnl::convolution_backward_data::primitive_desc data_pd(
        Engine(), algo, g.Src(), any, g.Dst(), g.Strides(), g.PadLo(),
        g.PadHi(), fwd_pd, attr);
    dnnl::convolution_backward_weights::primitive_desc weights_pd(
        Engine(), algo, g.Src(), any, g.Dst(), g.Strides(), g.PadLo(),
        g.PadHi(), fwd_pd, attr);
    fwd = dnnl::convolution_forward(fwd_pd);
    bwd_data = dnnl::convolution_backward_data(data_pd);
    bwd_weights = dnnl::convolution_backward_weights(weights_pd);
    fwd_kernel = fwd_pd.weights_desc();
    bwd_data_kernel = data_pd.weights_desc();
    bwd_weights_kernel = weights_pd.diff_weights_desc();
    fwd_scratch = fwd_pd.scratchpad_desc();
    bwd_data_scratch = data_pd.scratchpad_desc();
    bwd_weights_scratch = weights_pd.scratchpad_desc();
  }
};

// Building a plan costs milliseconds, so each geometry builds one once.
const Plan& PlanFor(const Geometry& g) {
  static std::mutex mutex;
  static std::map<decltype(g.Key()), std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[g.Key()];
  if (!plan) plan = std::make_unique<Plan>(g);
  return *plan;
}

// `user` in `want`'s layout: itself, or a reordered copy.
memory InLayout(memory user, const memory::desc& want,
                dnnl::stream& stream) {
  if (user.get_desc() == want) return user;
  memory copy(want, Engine());
  dnnl::reorder(user, copy).execute(stream, user, copy);
  return copy;
}

// oneDNN reports failures by throwing; no exception may cross into XLA.
template <typename Fn>
ffi::Error Guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("cnnflax native conv: ") +
                                e.what());
  }
}

ffi::ErrorOr<memory::data_type> TypeOf(ffi::DataType type) {
  if (type == ffi::DataType::F32) return memory::data_type::f32;
  if (type == ffi::DataType::BF16) return memory::data_type::bf16;
  return ffi::Unexpected(
      ffi::Error::InvalidArgument("cnnflax native conv: f32 or bf16 only"));
}

ffi::ErrorOr<Geometry> MakeGeometry(ffi::AnyBuffer::Dimensions in,
                                    ffi::AnyBuffer::Dimensions kernel,
                                    ffi::AnyBuffer::Dimensions out,
                                    ffi::DataType type, int64_t sh, int64_t sw,
                                    int64_t pt, int64_t pl, int64_t pb,
                                    int64_t pr) {
  if (in.size() != 4 || kernel.size() != 4 || out.size() != 4 ||
      kernel[2] != in[3] || kernel[3] != out[3] || in[0] != out[0])
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "cnnflax native conv: shapes must be NHWC, HWIO, NHWC"));
  auto dt = TypeOf(type);
  if (dt.has_error()) return ffi::Unexpected(dt.error());
  return Geometry{in[0],     in[1], in[2], in[3], kernel[0], kernel[1],
                  kernel[3], out[1], out[2], sh,   sw,        pt,
                  pl,        pb,    pr,    dt.value()};
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer kernel,
                   ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pl, int64_t pb, int64_t pr) {
  return Guarded([&]() -> ffi::Error {
    auto g = MakeGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(),
                          x.element_type(), sh, sw, pt, pl, pb, pr);
    if (g.has_error()) return g.error();
    const Plan& plan = PlanFor(g.value());
    dnnl::stream stream(Engine());
    memory src(g->Src(), Engine(), x.untyped_data());
    memory dst(g->Dst(), Engine(), y->untyped_data());
    memory user(g->Kernel(Tag::hwio), Engine(), kernel.untyped_data());
    memory weights = InLayout(user, plan.fwd_kernel, stream);
    memory scratch(plan.fwd_scratch, Engine());
    plan.fwd.execute(stream, {{DNNL_ARG_SRC, src},
                              {DNNL_ARG_WEIGHTS, weights},
                              {DNNL_ARG_DST, dst},
                              {DNNL_ARG_SCRATCHPAD, scratch}});
    stream.wait();
    return ffi::Error::Success();
  });
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer kernel,
                        ffi::Result<ffi::AnyBuffer> dx, int64_t sh, int64_t sw,
                        int64_t pt, int64_t pl, int64_t pb, int64_t pr) {
  return Guarded([&]() -> ffi::Error {
    auto g = MakeGeometry(dx->dimensions(), kernel.dimensions(),
                          dy.dimensions(), dy.element_type(), sh, sw, pt, pl, pb,
                          pr);
    if (g.has_error()) return g.error();
    const Plan& plan = PlanFor(g.value());
    dnnl::stream stream(Engine());
    memory diff_dst(g->Dst(), Engine(), dy.untyped_data());
    memory diff_src(g->Src(), Engine(), dx->untyped_data());
    memory user(g->Kernel(Tag::hwio), Engine(), kernel.untyped_data());
    memory weights = InLayout(user, plan.bwd_data_kernel, stream);
    memory scratch(plan.bwd_data_scratch, Engine());
    plan.bwd_data.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst},
                                   {DNNL_ARG_WEIGHTS, weights},
                                   {DNNL_ARG_DIFF_SRC, diff_src},
                                   {DNNL_ARG_SCRATCHPAD, scratch}});
    stream.wait();
    return ffi::Error::Success();
  });
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                           ffi::Result<ffi::AnyBuffer> dkernel, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pl, int64_t pb,
                           int64_t pr) {
  return Guarded([&]() -> ffi::Error {
    auto g = MakeGeometry(x.dimensions(), dkernel->dimensions(),
                          dy.dimensions(), x.element_type(), sh, sw, pt, pl, pb,
                          pr);
    if (g.has_error()) return g.error();
    const Plan& plan = PlanFor(g.value());
    dnnl::stream stream(Engine());
    memory src(g->Src(), Engine(), x.untyped_data());
    memory diff_dst(g->Dst(), Engine(), dy.untyped_data());
    memory user(g->Kernel(Tag::hwio), Engine(), dkernel->untyped_data());
    bool direct = plan.bwd_weights_kernel == user.get_desc();
    memory diff_weights =
        direct ? user : memory(plan.bwd_weights_kernel, Engine());
    memory scratch(plan.bwd_weights_scratch, Engine());
    plan.bwd_weights.execute(stream, {{DNNL_ARG_SRC, src},
                                      {DNNL_ARG_DIFF_DST, diff_dst},
                                      {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                                      {DNNL_ARG_SCRATCHPAD, scratch}});
    if (!direct) dnnl::reorder(diff_weights, user).execute(stream, diff_weights, user);
    stream.wait();
    return ffi::Error::Success();
  });
}

}  // namespace

#define CNNFLAX_CONV_ATTRS(binding)   \
  binding.Attr<int64_t>("stride_h")  \
      .Attr<int64_t>("stride_w")     \
      .Attr<int64_t>("pad_top")      \
      .Attr<int64_t>("pad_left")     \
      .Attr<int64_t>("pad_bottom")   \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CnnflaxConvForward, Forward,
    CNNFLAX_CONV_ATTRS(ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CnnflaxConvBackwardData, BackwardData,
    CNNFLAX_CONV_ATTRS(ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CnnflaxConvBackwardWeights, BackwardWeights,
    CNNFLAX_CONV_ATTRS(ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()));
