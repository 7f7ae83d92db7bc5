"""Convolution and pooling in the forms XLA:CPU runs fast; every other backend gets plain `lax` ops.

Which convolutions a jitted function runs is an explicit choice, `impl`, one of IMPLS:
- 'onednn': float32 NHWC convolutions go to oneDNN (`aws_jax.onednn`): 1.2–3× faster than XLA's forward and
  backward on these models' layers, except output maps of at most `ONEDNN_IM2COL_MAX_PIXELS` pixels (VGG's 2×2
  stage), where an im2col matmul is faster. Where `winograd_suits` (3×3 at stride 1, ≥ 32 channels, maps ≥ 4×4,
  enough 4×4 tiles), by Winograd's algorithm: 2–2.4× faster than direct on VGG-16's layers, as accurate, rounded
  differently (oneDNN 2's, on AVX-512 only; PyPI's oneDNN 3.13 had none on an AVX-512 CPU and ran direct).
  'onednn_direct': oneDNN without Winograd.
- 'xla': XLA's own convolutions in the forms below. A 3×3 convolution on a small map runs at a few GFLOP/s in
  XLA, so output maps of at most `IM2COL_MAX_PIXELS` pixels are one matmul over extracted patches (im2col), and so
  are 1×1 convolutions; for inputs of at most `MATERIALIZE_MAX_CHANNELS` channels, the backward pass reads the input
  from an exact identity matmul, so that XLA does not recompute the forward's BatchNorm/ReLU/residual chain inside
  the kernel gradient's transposes.
- Grouped convolutions (MobileNetV2's depthwise ones, ShuffleNet's): under 'onednn', oneDNN's (much faster than the
  shifted views, forward and backward: README, "Speed"); under 'xla', depthwise ones are a sum of shifted, scaled
  views of the input (`depthwise_conv`), where XLA:CPU's grouped convolution ran ~4× slower forward and backward.
- 'lax': plain `lax.conv_general_dilated` (what GPUs and TPUs always get; XLA counts its FLOPs).
- 'auto' (the default): 'onednn' on a single CPU device where oneDNN is built, else 'xla' on CPU, 'lax' elsewhere.
Overrides from the environment: `AWS_JAX_ONEDNN=0` turns 'auto' and 'onednn' into 'xla'; `AWS_JAX_WINOGRAD=0`
turns 'onednn' into 'onednn_direct'; `AWS_JAX_ONEDNN_LIBRARY` picks the oneDNN build (aws_jax/onednn.py). Off CPU
every choice is 'lax'; oneDNN is float32 on one device only.

`using(impl, fn)` is `fn` traced under that choice: a new function, so `jax.jit(using('xla', step))` and
`jax.jit(using('onednn', step))` are two jitted functions that never share a compilation (config key `conv`).
`implementation(impl)` is the same as a context manager, for code that traces inside it.

Also, whatever the choice:
- `compiler_options()`, for `jax.jit` of model code: XLA:CPU hands convolutions to YNNPACK by default, whose
  3×3 convolutions ran 2–2.5× slower forward and backward than XLA's own (Eigen); this takes convolutions back
  from YNNPACK and leaves it the dots and reductions, where it is faster.
- `max_pool`: a window-equals-stride max-pool is a maximum over strided slices; its gradient is elementwise,
  where `nn.max_pool`'s select-and-scatter gradient became index arrays and a scatter (8× slower).
Models get these through `aws_jax.models.Conv` and `max_pool`; the trainer's `jax.jit`s pass `compiler_options()`.
Measured speeds: README, "Speed".
"""
import contextlib
import contextvars
import functools
import itertools
import os

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from aws_jax import config as config_lib
from aws_jax import onednn
from aws_jax.errors import UserError

IMPLS = config_lib.CONV_IMPLS
_IMPL = contextvars.ContextVar('aws_jax_conv_impl', default='auto')
ONEDNN_IM2COL_MAX_PIXELS = 4
IM2COL_MAX_PIXELS = 16
MATERIALIZE_MAX_CHANNELS = 64
# YNNPACK's share of XLA:CPU's work: its default (individual_dot, individual_convolution, reduce) less convolutions.
CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _shifted_windows(x, kernel_hw, strides, padding):
  """The kh·kw strided views of padded NHWC `x` that each kernel tap multiplies, tap by tap (row-major)."""
  (top, bottom), (left, right) = padding
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h = (x.shape[1] - kernel_hw[0]) // strides[0] + 1
  out_w = (x.shape[2] - kernel_hw[1]) // strides[1] + 1
  return [x[:, i:i + strides[0] * (out_h - 1) + 1:strides[0], j:j + strides[1] * (out_w - 1) + 1:strides[1]]
          for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]


def im2col_conv(x, kernel, strides, padding):
  """NHWC × HWIO convolution as patches @ kernel; `padding` is ((top, bottom), (left, right))."""
  kh, kw, cin, cout = kernel.shape
  patches = _shifted_windows(x, (kh, kw), strides, padding)
  patches = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]
  return jnp.einsum('nhwk,ko->nhwo', patches, kernel.reshape(kh * kw * cin, cout))


def depthwise_conv(x, kernel, strides, padding):
  """NHWC × HW1C depthwise convolution (one filter per channel) as a sum of shifted, scaled views of `x`: fused
  elementwise loops forward and backward, rounded differently from XLA's grouped convolution (tested equal within
  float32 tolerance)."""
  windows = _shifted_windows(x, kernel.shape[:2], strides, padding)
  taps = kernel.reshape(-1, kernel.shape[-1])
  return functools.reduce(jnp.add, (window * tap for window, tap in zip(windows, taps)))


def _explicit_padding(padding, in_shape, kernel_shape, strides):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_shape, kernel_shape, strides, padding))
  return tuple(tuple(p) for p in padding)


def validate(impl: str) -> str:
  """`impl` itself if it is one of IMPLS, else a UserError naming the choices."""
  if impl not in IMPLS:
    raise UserError(f'convolution implementation {impl!r} is not one of {", ".join(IMPLS)}')
  return impl


@contextlib.contextmanager
def implementation(impl: str):
  """Within this context, `conv_general_dilated` traces the convolutions of `impl` (one of IMPLS).

  It acts at trace time: a function jitted and traced once keeps the choice it was traced under. Prefer
  `using(impl, fn)`, which makes that choice part of the function.
  """
  token = _IMPL.set(validate(impl))
  try:
    yield
  finally:
    _IMPL.reset(token)


def using(impl: str, fn):
  """`fn` whose every call (hence every trace) runs under `implementation(impl)`: a new function, so jitting it
  gives a jitted function of its own, which shares no compilation with one traced under another choice."""
  validate(impl)

  @functools.wraps(fn)
  def traced_with_choice(*args, **kwargs):
    with implementation(impl):
      return fn(*args, **kwargs)

  return traced_with_choice


def resolve(impl: str | None = None) -> str:
  """The convolutions `impl` (default: the current choice) gives here: 'onednn', 'onednn_direct', 'xla' or
  'lax', after 'auto', the backend, the device count, oneDNN's availability and the environment's overrides."""
  impl = validate(_IMPL.get() if impl is None else impl)
  if jax.default_backend() != 'cpu':
    return 'lax'
  if impl in ('auto', 'onednn', 'onednn_direct'):
    if jax.device_count() != 1 or not onednn.available():  # XLA can't split a custom call over a mesh
      return 'xla'
    if impl == 'onednn_direct' or os.environ.get('AWS_JAX_WINOGRAD', '1') == '0':
      return 'onednn_direct'
    return 'onednn'
  return impl


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated`, by the convolutions `resolve()` names: plain NHWC float32 convolutions, grouped
  ones included, go to oneDNN, or with 'xla', depthwise ones to `depthwise_conv`, those of small output maps and 1×1
  ones to `im2col_conv`, and those of few input channels keep their input for the backward pass in a buffer of its
  own."""
  impl = resolve()
  grouped = feature_group_count > 1
  depthwise = (impl != 'lax' and lhs.ndim == 4 and feature_group_count == lhs.shape[-1] == rhs.shape[-1] > 1
               and rhs.shape[2] == 1)
  plain = (impl != 'lax' and lhs.ndim == 4 and (not grouped or depthwise or impl.startswith('onednn')) and not kwargs
           and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
  pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], window_strides) if plain else ()
  if plain and min(map(min, pads)) >= 0:  # negative padding crops: lax's
    out_h = (lhs.shape[1] + sum(pads[0]) - rhs.shape[0]) // window_strides[0] + 1
    out_w = (lhs.shape[2] + sum(pads[1]) - rhs.shape[1]) // window_strides[1] + 1
    onednn_suits = lhs.dtype == rhs.dtype == jnp.float32 and (grouped or out_h * out_w > ONEDNN_IM2COL_MAX_PIXELS)
    if impl.startswith('onednn') and onednn_suits:
      winograd = (impl == 'onednn' and not grouped
                  and winograd_suits(lhs.shape, rhs.shape, window_strides, (out_h, out_w)))
      return onednn.conv(lhs, rhs, window_strides, pads, winograd=winograd)
    if depthwise:
      return depthwise_conv(lhs, rhs, window_strides, pads)
    if not grouped and (out_h * out_w <= IM2COL_MAX_PIXELS or rhs.shape[:2] == (1, 1)):
      return im2col_conv(lhs, rhs, window_strides, pads)
    if not grouped and lhs.shape[-1] <= MATERIALIZE_MAX_CHANNELS:
      return _input_materialized_for_backward(
          functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=pads,
                            dimension_numbers=dimension_numbers, precision=precision))(lhs, rhs)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, precision=precision, **kwargs)


def winograd_suits(in_shape, kernel_shape, strides, out_hw) -> bool:
  """Whether oneDNN's Winograd convolution beat its direct one, forward and backward, on the 2-core AVX-512 CPU
  measured: 3×3 kernels at stride 1, ≥ 32 channels in and out (at 16, direct wins), output maps of ≥ 4×4, and
  ≥ 32 of its 4×4 output tiles in the batch (fewer leave it idle)."""
  tiles = in_shape[0] * -(-out_hw[0] // 4) * -(-out_hw[1] // 4)
  return (tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and min(kernel_shape[2:]) >= 32
          and min(out_hw) >= 4 and tiles >= 32)


def identity_matmul(x):
  """`x` through a matmul by the identity over its last axis: exactly `x` where finite (x·1 plus zeros; an inf
  makes its pixel NaN, as the loss would be anyway), in a buffer XLA cannot fuse the computation of `x` into."""
  return jnp.einsum('...c,cd->...d', x, jnp.eye(x.shape[-1], dtype=x.dtype))


def _input_materialized_for_backward(conv):
  """`conv(x, w)` with lax's gradients, whose backward reads `x` from `identity_matmul(x)`.

  The kernel gradient needs `x` transposed (channels first, batch last). Left alone, XLA:CPU fuses the forward's
  elementwise chain that made `x` (BatchNorm, interpolation, ReLU, every residual sum back to the stage's start)
  into that transpose and recomputes it with strided, cache-hostile reads: 40 % of a ResNet-20 step. A matmul
  can't be fused into, so the transpose copies a plain buffer; the matmul costs 2·channels FLOPs per element,
  hence `MATERIALIZE_MAX_CHANNELS`.
  """
  @jax.custom_vjp
  def materialized(x, w):
    return conv(x, w)

  def forward(x, w):
    return conv(x, w), (identity_matmul(x), w)

  def backward(residuals, cotangent):
    return jax.vjp(conv, *residuals)[1](cotangent)

  materialized.defvjp(forward, backward)
  return materialized


@functools.cache
def compiler_options() -> dict[str, str] | None:
  """`jax.jit(..., compiler_options=...)` for model code: `CPU_COMPILER_OPTIONS` on CPU, else None.

  The option is experimental in XLA; if this jaxlib refuses it, XLA's defaults are used, with a warning.
  """
  if jax.default_backend() != 'cpu':
    return None
  try:
    jax.jit(jnp.negative, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.float32(0)).compile()
  except jax.errors.JaxRuntimeError as e:
    logging.warning('XLA:CPU refused %s, so convolutions may run slower: %s', CPU_COMPILER_OPTIONS, e)
    return None
  return dict(CPU_COMPILER_OPTIONS)


def max_pool(x, window: int, stride: int | None = None, padding=((0, 0), (0, 0))):
  """`nn.max_pool(x, (window, window), (stride, stride), padding)` on NHWC; the maximum of strided slices where
  the windows tile the map (window = stride, no padding). Ties share the gradient there (jnp.maximum's rule),
  where select-and-scatter gives it to one input; after a ReLU, tied inputs are zeros with zero gradient anyway."""
  stride = stride or window
  tiled = window == stride and padding == ((0, 0), (0, 0)) and x.shape[1] % window == x.shape[2] % window == 0
  if not tiled or jax.default_backend() != 'cpu':
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)
  return functools.reduce(jnp.maximum, (x[:, i::window, j::window] for i, j in itertools.product(range(window),
                                                                                               repeat=2)))
