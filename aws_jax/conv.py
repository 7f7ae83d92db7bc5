"""A drop-in for `lax.conv_general_dilated` that avoids XLA:CPU's slow convolutions on small feature maps.

XLA:CPU runs a 3×3 convolution on a 2×2 map (VGG's last stage) at a few GFLOP/s, about 50× below its matmul
speed. On CPU, convolutions whose output map has at most `IM2COL_MAX_PIXELS` pixels are computed as one matmul
over extracted patches (im2col), which XLA turns into a fast GEMM forward and backward. Everything else, and every
other backend, goes to `lax.conv_general_dilated` unchanged. Models get this through `aws_jax.models.Conv`.
"""
import jax
import jax.numpy as jnp
from jax import lax

IM2COL_MAX_PIXELS = 16
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def im2col_conv(x, kernel, strides, padding):
  """NHWC × HWIO convolution as patches @ kernel; `padding` is ((top, bottom), (left, right))."""
  kh, kw, cin, cout = kernel.shape
  (top, bottom), (left, right) = padding
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h = (x.shape[1] - kh) // strides[0] + 1
  out_w = (x.shape[2] - kw) // strides[1] + 1
  patches = [x[:, i:i + strides[0] * (out_h - 1) + 1:strides[0], j:j + strides[1] * (out_w - 1) + 1:strides[1]]
             for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]
  return jnp.einsum('nhwk,ko->nhwo', patches, kernel.reshape(kh * kw * cin, cout))


def _explicit_padding(padding, in_shape, kernel_shape, strides):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_shape, kernel_shape, strides, padding))
  return tuple(tuple(p) for p in padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated`, routed to `im2col_conv` for small NHWC output maps on CPU."""
  plain = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
           and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
  if plain and jax.default_backend() == 'cpu':
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], window_strides)
    out_h = (lhs.shape[1] + sum(pads[0]) - rhs.shape[0]) // window_strides[0] + 1
    out_w = (lhs.shape[2] + sum(pads[1]) - rhs.shape[1]) // window_strides[1] + 1
    if out_h * out_w <= IM2COL_MAX_PIXELS:
      return im2col_conv(lhs, rhs, window_strides, pads)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, precision=precision, **kwargs)
