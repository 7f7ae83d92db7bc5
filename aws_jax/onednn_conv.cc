// oneDNN convolutions as XLA FFI handlers, for aws_jax/onednn.py (which compiles and registers this file).
//
// All three take and give plain row-major float32 buffers: x NHWC, w HWIO, y NHWC. oneDNN reads and writes the
// activations in place as nhwc and picks its own blocked layout for the (small) weights, reordered per call.
// Attribute `window` = {stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right}; bottom/right are the
// padding the output's size actually uses.
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
using Key = std::array<int64_t, 16>;  // kind, x's NHWC, w's HW and O, y's HW, window

// One convolution's primitives, made once per shape: building them (oneDNN's dispatch, JIT) costs milliseconds.
struct Primitives {
  dnnl::primitive primitive;
  memory::desc weights;  // the layout the primitive wants the kernel (or the kernel's gradient) in
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::desc Nhwc(int64_t n, int64_t h, int64_t w, int64_t c) {
  return memory::desc({n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc);
}

memory::desc Hwio(const Key& k, memory::format_tag tag) {
  return memory::desc({k[7], k[4], k[5], k[6]}, memory::data_type::f32, tag);
}

// kind 0: forward; 1: gradient wrt the input; 2: gradient wrt the kernel.
std::shared_ptr<Primitives> Get(const Key& k) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[k];
  if (entry) return entry;
  const memory::desc x = Nhwc(k[1], k[2], k[3], k[4]), y = Nhwc(k[1], k[8], k[9], k[7]);
  const memory::desc any = Hwio(k, memory::format_tag::any);
  const memory::dims strides{k[10], k[11]}, pad_l{k[12], k[14]}, pad_r{k[13], k[15]};
  const auto direct = dnnl::algorithm::convolution_direct;
  auto forward_pd = dnnl::convolution_forward::primitive_desc(
      {dnnl::prop_kind::forward_training, direct, x, any, y, strides, pad_l, pad_r}, Engine());
  if (k[0] == 0) {
    entry.reset(new Primitives{dnnl::convolution_forward(forward_pd), forward_pd.weights_desc()});
  } else if (k[0] == 1) {
    auto pd = dnnl::convolution_backward_data::primitive_desc({direct, x, any, y, strides, pad_l, pad_r}, Engine(),
                                                              forward_pd);
    entry.reset(new Primitives{dnnl::convolution_backward_data(pd), pd.weights_desc()});
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc({direct, x, any, y, strides, pad_l, pad_r},
                                                                 Engine(), forward_pd);
    entry.reset(new Primitives{dnnl::convolution_backward_weights(pd), pd.diff_weights_desc()});
  }
  return entry;
}

Key MakeKey(int64_t kind, ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
            ffi::Span<const int64_t> window) {
  return {kind, x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
          window[0], window[1], window[2], window[3], window[4], window[5]};
}

// Runs the primitive of `key`; `io` holds the user's activation buffers, `kernel` the user's HWIO buffer.
ffi::Error Run(const Key& key, int kernel_arg, void* kernel, std::unordered_map<int, memory> io) {
  try {
    thread_local dnnl::stream stream(Engine());
    auto p = Get(key);
    memory user(Hwio(key, memory::format_tag::hwio), Engine(), kernel);
    memory internal = p->weights == user.get_desc() ? user : memory(p->weights, Engine());
    if (kernel_arg != DNNL_ARG_DIFF_WEIGHTS && internal != user) {
      dnnl::reorder(user, internal).execute(stream, user, internal);
    }
    io[kernel_arg] = internal;
    p->primitive.execute(stream, io);
    if (kernel_arg == DNNL_ARG_DIFF_WEIGHTS && internal != user) {
      dnnl::reorder(internal, user).execute(stream, internal, user);
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

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> window) {
  auto key = MakeKey(0, x.dimensions(), w.dimensions(), y->dimensions(), window);
  return Run(key, DNNL_ARG_WEIGHTS, w.untyped_data(),
             {{DNNL_ARG_SRC, Activations(x.dimensions(), x.untyped_data())},
              {DNNL_ARG_DST, Activations(y->dimensions(), y->untyped_data())}});
}

ffi::Error InputGradient(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                         ffi::Span<const int64_t> window) {
  auto key = MakeKey(1, dx->dimensions(), w.dimensions(), dy.dimensions(), window);
  return Run(key, DNNL_ARG_WEIGHTS, w.untyped_data(),
             {{DNNL_ARG_DIFF_DST, Activations(dy.dimensions(), dy.untyped_data())},
              {DNNL_ARG_DIFF_SRC, Activations(dx->dimensions(), dx->untyped_data())}});
}

ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          ffi::Span<const int64_t> window) {
  auto key = MakeKey(2, x.dimensions(), dw->dimensions(), dy.dimensions(), window);
  return Run(key, DNNL_ARG_DIFF_WEIGHTS, dw->untyped_data(),
             {{DNNL_ARG_SRC, Activations(x.dimensions(), x.untyped_data())},
              {DNNL_ARG_DIFF_DST, Activations(dy.dimensions(), dy.untyped_data())}});
}

// All three: two float32 operands, one float32 result, the `window` attribute.
auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<ffi::Span<const int64_t>>("window");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AwsOnednnConvForward, Forward, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AwsOnednnConvInputGradient, InputGradient, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AwsOnednnConvKernelGradient, KernelGradient, Binding());
