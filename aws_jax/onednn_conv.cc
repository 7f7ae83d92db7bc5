// oneDNN convolutions as XLA FFI handlers, for aws_jax/onednn.py (which compiles and registers this file).
//
// All three take and give plain row-major float32 buffers: x NHWC, w HWIO, y NHWC. Direct convolutions read and
// write the activations in place as nhwc and take the (small) weights in a blocked layout of their own, reordered
// per call. Winograd's convolutions (F(4×4, 3×3): 2–2.4× fewer multiplications on 3×3 kernels at stride 1) want
// blocked activations too: every operand is reordered in and out, a few % of their time.
// Attributes: `window` = {stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right}, bottom/right the padding
// the output's size actually uses; `winograd`: use Winograd's algorithm where oneDNN has it for this shape and CPU
// (AVX-512), else the direct one.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using Key = std::array<int64_t, 17>;  // kind, x's NHWC, w's HW and O, y's HW, window, winograd

// One convolution's primitive, made once per shape: building it (oneDNN's dispatch, JIT) costs milliseconds.
struct Primitives {
  dnnl::primitive primitive;
  std::unordered_map<int, memory::desc> layouts;  // the layout it wants each argument (DNNL_ARG_*) in
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::desc Nhwc(int64_t n, int64_t h, int64_t w, int64_t c, memory::format_tag tag = memory::format_tag::nhwc) {
  return memory::desc({n, c, h, w}, memory::data_type::f32, tag);
}

memory::desc Hwio(const Key& k, memory::format_tag tag) {
  return memory::desc({k[7], k[4], k[5], k[6]}, memory::data_type::f32, tag);
}

// The primitive of kind 0 (forward), 1 (gradient wrt the input) or 2 (gradient wrt the kernel) for `k`.
std::shared_ptr<Primitives> Make(const Key& k, dnnl::algorithm algorithm) {
  const auto activations = algorithm == dnnl::algorithm::convolution_direct ? memory::format_tag::nhwc
                                                                              : memory::format_tag::any;
  const memory::desc x = Nhwc(k[1], k[2], k[3], k[4], activations), y = Nhwc(k[1], k[8], k[9], k[7], activations);
  const memory::desc w = Hwio(k, memory::format_tag::any);
  const memory::dims strides{k[10], k[11]}, pad_l{k[12], k[14]}, pad_r{k[13], k[15]};
  dnnl::primitive_attr attr;  // each call brings its own scratchpad: calls run concurrently on XLA's threads
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto forward = dnnl::convolution_forward::primitive_desc(
      {dnnl::prop_kind::forward_training, algorithm, x, w, y, strides, pad_l, pad_r}, attr, Engine());
  if (k[0] == 0) {
    return std::make_shared<Primitives>(Primitives{
        dnnl::convolution_forward(forward), {{DNNL_ARG_SRC, forward.src_desc()},
                                             {DNNL_ARG_WEIGHTS, forward.weights_desc()},
                                             {DNNL_ARG_DST, forward.dst_desc()},
                                             {DNNL_ARG_SCRATCHPAD, forward.scratchpad_desc()}}});
  }
  if (k[0] == 1) {
    auto pd = dnnl::convolution_backward_data::primitive_desc({algorithm, x, w, y, strides, pad_l, pad_r}, attr,
                                                              Engine(), forward);
    return std::make_shared<Primitives>(Primitives{
        dnnl::convolution_backward_data(pd), {{DNNL_ARG_DIFF_DST, pd.diff_dst_desc()},
                                              {DNNL_ARG_WEIGHTS, pd.weights_desc()},
                                              {DNNL_ARG_DIFF_SRC, pd.diff_src_desc()},
                                              {DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc()}}});
  }
  auto pd = dnnl::convolution_backward_weights::primitive_desc({algorithm, x, w, y, strides, pad_l, pad_r}, attr,
                                                               Engine(), forward);
  return std::make_shared<Primitives>(Primitives{
      dnnl::convolution_backward_weights(pd), {{DNNL_ARG_SRC, pd.src_desc()},
                                               {DNNL_ARG_DIFF_DST, pd.diff_dst_desc()},
                                               {DNNL_ARG_DIFF_WEIGHTS, pd.diff_weights_desc()},
                                               {DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc()}}});
}

// The cached primitive for `k`: Winograd's where asked for and oneDNN has one (else oneDNN throws), else direct.
// oneDNN 2.6's Winograd input gradient is wrong where padding differs between sides (tests/test_onednn.py):
// those run direct.
std::shared_ptr<Primitives> Get(const Key& k) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[k];
  if (entry) return entry;
  if (k[16] && k[12] == k[13] && k[14] == k[15]) {
    try {
      entry = Make(k, dnnl::algorithm::convolution_winograd);
    } catch (const dnnl::error&) {  // no implementation for this shape or CPU
    }
  }
  if (!entry) entry = Make(k, dnnl::algorithm::convolution_direct);
  return entry;
}

Key MakeKey(int64_t kind, ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
            ffi::Span<const int64_t> window, bool winograd) {
  return {kind, x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
          window[0], window[1], window[2], window[3], window[4], window[5], winograd};
}

// Runs the primitive of `key` on the user's buffers: `inputs` and `outputs` map DNNL_ARG_* to plain buffers, each
// reordered into (out of) the layout the primitive wants where that differs.
ffi::Error Run(const Key& key, std::unordered_map<int, memory> inputs, std::unordered_map<int, memory> outputs) {
  try {
    thread_local dnnl::stream stream(Engine());
    auto p = Get(key);
    std::unordered_map<int, memory> args;
    auto internal = [&](int arg, const memory& user) {
      const memory::desc& layout = p->layouts.at(arg);
      return args[arg] = layout == user.get_desc() ? user : memory(layout, Engine());
    };
    for (auto& [arg, user] : inputs) {
      memory m = internal(arg, user);
      if (m != user) dnnl::reorder(user, m).execute(stream, user, m);
    }
    for (auto& [arg, user] : outputs) internal(arg, user);
    args[DNNL_ARG_SCRATCHPAD] = memory(p->layouts.at(DNNL_ARG_SCRATCHPAD), Engine());
    p->primitive.execute(stream, args);
    for (auto& [arg, user] : outputs) {
      memory& m = args[arg];
      if (m != user) dnnl::reorder(m, user).execute(stream, m, user);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

memory Activations(ffi::Span<const int64_t> d, const void* data) {
  return memory(Nhwc(d[0], d[1], d[2], d[3]), Engine(), const_cast<void*>(data));
}

memory Kernel(const Key& key, const void* data) {
  return memory(Hwio(key, memory::format_tag::hwio), Engine(), const_cast<void*>(data));
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> window, bool winograd) {
  auto key = MakeKey(0, x.dimensions(), w.dimensions(), y->dimensions(), window, winograd);
  return Run(key, {{DNNL_ARG_SRC, Activations(x.dimensions(), x.untyped_data())},
                   {DNNL_ARG_WEIGHTS, Kernel(key, w.untyped_data())}},
             {{DNNL_ARG_DST, Activations(y->dimensions(), y->untyped_data())}});
}

ffi::Error InputGradient(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                         ffi::Span<const int64_t> window, bool winograd) {
  auto key = MakeKey(1, dx->dimensions(), w.dimensions(), dy.dimensions(), window, winograd);
  return Run(key, {{DNNL_ARG_DIFF_DST, Activations(dy.dimensions(), dy.untyped_data())},
                   {DNNL_ARG_WEIGHTS, Kernel(key, w.untyped_data())}},
             {{DNNL_ARG_DIFF_SRC, Activations(dx->dimensions(), dx->untyped_data())}});
}

ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          ffi::Span<const int64_t> window, bool winograd) {
  auto key = MakeKey(2, x.dimensions(), dw->dimensions(), dy.dimensions(), window, winograd);
  return Run(key, {{DNNL_ARG_SRC, Activations(x.dimensions(), x.untyped_data())},
                   {DNNL_ARG_DIFF_DST, Activations(dy.dimensions(), dy.untyped_data())}},
             {{DNNL_ARG_DIFF_WEIGHTS, Kernel(key, dw->untyped_data())}});
}

// All three: two float32 operands, one float32 result, the `window` and `winograd` attributes.
auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<ffi::Span<const int64_t>>("window")
      .Attr<bool>("winograd");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AwsOnednnConvForward, Forward, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AwsOnednnConvInputGradient, InputGradient, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AwsOnednnConvKernelGradient, KernelGradient, Binding());
