// oneDNN convolutions as XLA FFI handlers, for aws_jax/onednn.py (which compiles and registers this file).
//
// All three take and give plain row-major float32 buffers: x NHWC, w HWIO, y NHWC; grouped convolutions (depthwise
// ones among them) have x's channels / w's I groups. Direct convolutions read and
// write the activations in place as nhwc and take the (small) weights in a blocked layout of their own, reordered
// per call. Winograd's convolutions (F(4×4, 3×3): 2–2.4× faster on 3×3 kernels at stride 1) want blocked
// activations too: every operand is reordered in or out, a few % of their time.
// Builds against oneDNN 2 (Debian 12's libdnnl-dev: Winograd's float32 convolutions on AVX-512) or 3 (none there).
// Attributes: `window` = {stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right}, bottom/right the padding
// the output's size actually uses; `winograd`: use Winograd's algorithm where oneDNN has it for this shape and CPU
// (AVX-512) and the padding is the same on both sides of each axis, else the direct one.
#include <array>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using Key = std::array<int64_t, 18>;  // kind, x's NHWC, w's HW and O, y's HW, window, winograd, groups

// A primitive and the scratchpad it needs each call. Callers bring scratchpads (oneDNN's shared one is not safe
// when XLA runs two calls at once on its threads: Winograd's crashed).
struct Step {
  dnnl::primitive primitive;
  memory::desc scratchpad;
};

// One operand: the caller's plain layout (NHWC or HWIO), the layout the convolution wants, and where they differ,
// the reorder from the caller's buffer (inputs) or to it (outputs).
struct Operand {
  memory::desc user, layout;
  std::optional<Step> reorder;
};

// One convolution, made once per shape: building it (oneDNN's dispatch, JIT) costs milliseconds.
struct Convolution {
  Step step;
  std::unordered_map<int, Operand> operands;  // by DNNL_ARG_*
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Buffers for operand copies and scratchpads (up to 140 MB on VGG-16), kept for later calls: under glibc's malloc,
// fresh ones are mapped anew and page-faulted in every call, which doubled VGG-16's step. A lease takes the
// smallest free buffer that fits and is at most twice the size, else allocates one; it gives it back when done.
std::mutex pool_mutex;
std::multimap<size_t, void*> free_buffers;

class Lease {
 public:
  explicit Lease(size_t size) : size_((size + 63) / 64 * 64) {
    if (!size_) return;
    {
      std::lock_guard<std::mutex> lock(pool_mutex);
      auto it = free_buffers.lower_bound(size_);
      if (it != free_buffers.end() && it->first <= 2 * size_) {
        size_ = it->first;
        data_ = it->second;
        free_buffers.erase(it);
        return;
      }
    }
    data_ = std::aligned_alloc(64, size_);
    if (!data_) throw std::bad_alloc();
  }
  ~Lease() {
    if (!data_) return;
    std::lock_guard<std::mutex> lock(pool_mutex);
    free_buffers.emplace(size_, data_);
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  void* data() const { return data_; }

 private:
  size_t size_;
  void* data_ = nullptr;
};

memory::desc Nhwc(int64_t n, int64_t h, int64_t w, int64_t c, memory::format_tag tag = memory::format_tag::nhwc) {
  return memory::desc({n, c, h, w}, memory::data_type::f32, tag);
}

// The kernel: HWIO, or with groups G, HW(I/G)O with O = G·(O/G), which is oneDNN's hwigo (dims G, O/G, I/G, H, W).
memory::desc Hwio(const Key& k, bool user) {
  const int64_t g = k[17];
  if (g == 1) return memory::desc({k[7], k[4], k[5], k[6]}, memory::data_type::f32,
                                  user ? memory::format_tag::hwio : memory::format_tag::any);
  return memory::desc({g, k[7] / g, k[4] / g, k[5], k[6]}, memory::data_type::f32,
                      user ? memory::format_tag::hwigo : memory::format_tag::any);
}

Operand MakeOperand(const memory::desc& user, const memory::desc& layout, bool output) {
  if (layout == user) return {user, layout, std::nullopt};
  auto pd = output ? dnnl::reorder::primitive_desc(Engine(), layout, Engine(), user, UserScratchpad())
                   : dnnl::reorder::primitive_desc(Engine(), user, Engine(), layout, UserScratchpad());
  return {user, layout, Step{dnnl::reorder(pd), pd.scratchpad_desc()}};
}

// The convolution of kind 0 (forward), 1 (gradient wrt the input) or 2 (gradient wrt the kernel) for `k`.
std::shared_ptr<Convolution> Make(const Key& k, dnnl::algorithm algorithm) {
  const memory::desc x_user = Nhwc(k[1], k[2], k[3], k[4]), y_user = Nhwc(k[1], k[8], k[9], k[7]);
  const memory::desc w_user = Hwio(k, true);
  const auto activations = algorithm == dnnl::algorithm::convolution_direct ? memory::format_tag::nhwc
                                                                              : memory::format_tag::any;
  const memory::desc x = Nhwc(k[1], k[2], k[3], k[4], activations), y = Nhwc(k[1], k[8], k[9], k[7], activations);
  const memory::desc w = Hwio(k, false);
  const memory::dims strides{k[10], k[11]}, pad_l{k[12], k[14]}, pad_r{k[13], k[15]};
#if DNNL_VERSION_MAJOR >= 3  // primitive descriptors built from the engine and the shapes
  auto forward = dnnl::convolution_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training, algorithm,
                                                           x, w, y, strides, pad_l, pad_r, UserScratchpad());
#else  // from an operation descriptor
  auto forward = dnnl::convolution_forward::primitive_desc(
      {dnnl::prop_kind::forward_training, algorithm, x, w, y, strides, pad_l, pad_r}, UserScratchpad(), Engine());
#endif
  if (k[0] == 0) {
    return std::make_shared<Convolution>(Convolution{
        {dnnl::convolution_forward(forward), forward.scratchpad_desc()},
        {{DNNL_ARG_SRC, MakeOperand(x_user, forward.src_desc(), false)},
         {DNNL_ARG_WEIGHTS, MakeOperand(w_user, forward.weights_desc(), false)},
         {DNNL_ARG_DST, MakeOperand(y_user, forward.dst_desc(), true)}}});
  }
  if (k[0] == 1) {
#if DNNL_VERSION_MAJOR >= 3
    auto pd = dnnl::convolution_backward_data::primitive_desc(Engine(), algorithm, x, w, y, strides, pad_l, pad_r,
                                                              forward, UserScratchpad());
#else
    auto pd = dnnl::convolution_backward_data::primitive_desc({algorithm, x, w, y, strides, pad_l, pad_r},
                                                              UserScratchpad(), Engine(), forward);
#endif
    return std::make_shared<Convolution>(Convolution{
        {dnnl::convolution_backward_data(pd), pd.scratchpad_desc()},
        {{DNNL_ARG_DIFF_DST, MakeOperand(y_user, pd.diff_dst_desc(), false)},
         {DNNL_ARG_WEIGHTS, MakeOperand(w_user, pd.weights_desc(), false)},
         {DNNL_ARG_DIFF_SRC, MakeOperand(x_user, pd.diff_src_desc(), true)}}});
  }
#if DNNL_VERSION_MAJOR >= 3
  auto pd = dnnl::convolution_backward_weights::primitive_desc(Engine(), algorithm, x, w, y, strides, pad_l, pad_r,
                                                               forward, UserScratchpad());
#else
  auto pd = dnnl::convolution_backward_weights::primitive_desc({algorithm, x, w, y, strides, pad_l, pad_r},
                                                               UserScratchpad(), Engine(), forward);
#endif
  return std::make_shared<Convolution>(Convolution{
      {dnnl::convolution_backward_weights(pd), pd.scratchpad_desc()},
      {{DNNL_ARG_SRC, MakeOperand(x_user, pd.src_desc(), false)},
       {DNNL_ARG_DIFF_DST, MakeOperand(y_user, pd.diff_dst_desc(), false)},
       {DNNL_ARG_DIFF_WEIGHTS, MakeOperand(w_user, pd.diff_weights_desc(), true)}}});
}

// The cached convolution for `k`: Winograd's where asked for and oneDNN has one (else oneDNN throws), else direct.
// oneDNN 2.6's Winograd input gradient is wrong where padding differs between sides (tests/test_onednn.py):
// those run direct.
std::shared_ptr<Convolution> Get(const Key& k) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<Convolution>> cache;
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
          window[0], window[1], window[2], window[3], window[4], window[5], winograd, x[3] / w[2]};
}

void Execute(dnnl::stream& stream, const Step& step, std::unordered_map<int, memory> args) {
  Lease scratchpad(step.scratchpad.get_size());
  if (scratchpad.data()) args[DNNL_ARG_SCRATCHPAD] = memory(step.scratchpad, Engine(), scratchpad.data());
  step.primitive.execute(stream, args);
  stream.wait();
}

// Runs the convolution of `key` on the caller's plain buffers (`inputs` and `outputs` by DNNL_ARG_*), through
// copies in the convolution's own layouts where they differ.
ffi::Error Run(const Key& key, std::unordered_map<int, void*> inputs, std::unordered_map<int, void*> outputs) {
  try {
    thread_local dnnl::stream stream(Engine());
    auto convolution = Get(key);
    std::list<Lease> copies;
    std::unordered_map<int, memory> args;
    for (auto* operands : {&inputs, &outputs}) {
      for (auto& [arg, data] : *operands) {
        const Operand& operand = convolution->operands.at(arg);
        memory user(operand.user, Engine(), data);
        if (!operand.reorder) {
          args[arg] = user;
          continue;
        }
        args[arg] = memory(operand.layout, Engine(), copies.emplace_back(operand.layout.get_size()).data());
        if (operands == &inputs) Execute(stream, *operand.reorder, {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, args[arg]}});
      }
    }
    Execute(stream, convolution->step, args);
    for (auto& [arg, data] : outputs) {
      const Operand& operand = convolution->operands.at(arg);
      if (operand.reorder) {
        memory user(operand.user, Engine(), data);
        Execute(stream, *operand.reorder, {{DNNL_ARG_FROM, args[arg]}, {DNNL_ARG_TO, user}});
      }
    }
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> window, bool winograd) {
  return Run(MakeKey(0, x.dimensions(), w.dimensions(), y->dimensions(), window, winograd),
             {{DNNL_ARG_SRC, x.untyped_data()}, {DNNL_ARG_WEIGHTS, w.untyped_data()}},
             {{DNNL_ARG_DST, y->untyped_data()}});
}

ffi::Error InputGradient(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                         ffi::Span<const int64_t> window, bool winograd) {
  return Run(MakeKey(1, dx->dimensions(), w.dimensions(), dy.dimensions(), window, winograd),
             {{DNNL_ARG_DIFF_DST, dy.untyped_data()}, {DNNL_ARG_WEIGHTS, w.untyped_data()}},
             {{DNNL_ARG_DIFF_SRC, dx->untyped_data()}});
}

ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          ffi::Span<const int64_t> window, bool winograd) {
  return Run(MakeKey(2, x.dimensions(), dw->dimensions(), dy.dimensions(), window, winograd),
             {{DNNL_ARG_SRC, x.untyped_data()}, {DNNL_ARG_DIFF_DST, dy.untyped_data()}},
             {{DNNL_ARG_DIFF_WEIGHTS, dw->untyped_data()}});
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
