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
#include <unordered_map>

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

// One call of one handler: the plan of its geometry and oneDNN views of its
// three buffers. `in` is the NHWC input side (x, or dx), `out` the NHWC
// output side (y, or dy), `kernel` the HWIO kernel (or its gradient).
struct Call {
  const Plan& plan;
  dnnl::stream stream;
  memory in, out, kernel;

  // Runs `primitive` on `args` with a scratchpad of its own.
  void Execute(const dnnl::primitive& primitive, const memory::desc& scratch,
               std::unordered_map<int, memory> args) {
    args[DNNL_ARG_SCRATCHPAD] = memory(scratch, Engine());
    primitive.execute(stream, args);
  }
};

template <typename Body>
ffi::Error Run(ffi::AnyBuffer in, ffi::AnyBuffer kernel, ffi::AnyBuffer out,
               int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t pb,
               int64_t pr, Body body) {
  return Guarded([&]() -> ffi::Error {
    auto g = MakeGeometry(in.dimensions(), kernel.dimensions(),
                          out.dimensions(), in.element_type(), sh, sw, pt, pl,
                          pb, pr);
    if (g.has_error()) return g.error();
    Call call{PlanFor(g.value()), dnnl::stream(Engine()),
              memory(g->Src(), Engine(), in.untyped_data()),
              memory(g->Dst(), Engine(), out.untyped_data()),
              memory(g->Kernel(Tag::hwio), Engine(), kernel.untyped_data())};
    body(call);
    call.stream.wait();
    return ffi::Error::Success();
  });
}

#define CNNFLAX_CONV_PARAMS \
  int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr
#define CNNFLAX_CONV_ARGS sh, sw, pt, pl, pb, pr

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer kernel,
                   ffi::Result<ffi::AnyBuffer> y, CNNFLAX_CONV_PARAMS) {
  return Run(x, kernel, *y, CNNFLAX_CONV_ARGS, [](Call& c) {
    memory weights = InLayout(c.kernel, c.plan.fwd_kernel, c.stream);
    c.Execute(c.plan.fwd, c.plan.fwd_scratch,
              {{DNNL_ARG_SRC, c.in},
               {DNNL_ARG_WEIGHTS, weights},
               {DNNL_ARG_DST, c.out}});
  });
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer kernel,
                        ffi::Result<ffi::AnyBuffer> dx, CNNFLAX_CONV_PARAMS) {
  return Run(*dx, kernel, dy, CNNFLAX_CONV_ARGS, [](Call& c) {
    memory weights = InLayout(c.kernel, c.plan.bwd_data_kernel, c.stream);
    c.Execute(c.plan.bwd_data, c.plan.bwd_data_scratch,
              {{DNNL_ARG_DIFF_DST, c.out},
               {DNNL_ARG_WEIGHTS, weights},
               {DNNL_ARG_DIFF_SRC, c.in}});
  });
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                           ffi::Result<ffi::AnyBuffer> dkernel,
                           CNNFLAX_CONV_PARAMS) {
  return Run(x, *dkernel, dy, CNNFLAX_CONV_ARGS, [](Call& c) {
    // Written straight into the result where oneDNN wants HWIO too.
    bool direct = c.plan.bwd_weights_kernel == c.kernel.get_desc();
    memory grad = direct ? c.kernel : memory(c.plan.bwd_weights_kernel,
                                             Engine());
    c.Execute(c.plan.bwd_weights, c.plan.bwd_weights_scratch,
              {{DNNL_ARG_SRC, c.in},
               {DNNL_ARG_DIFF_DST, c.out},
               {DNNL_ARG_DIFF_WEIGHTS, grad}});
    if (!direct) dnnl::reorder(grad, c.kernel).execute(c.stream, grad, c.kernel);
  });
}

}  // namespace

// All three handlers take two buffers, return one and read the geometry
// from the same six attributes.
static auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<int64_t>("stride_h")
      .Attr<int64_t>("stride_w")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left")
      .Attr<int64_t>("pad_bottom")
      .Attr<int64_t>("pad_right");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnflaxConvForward, Forward, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnflaxConvBackwardData, BackwardData,
                              ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnflaxConvBackwardWeights, BackwardWeights,
                              ConvBinding());
