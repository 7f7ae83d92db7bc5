"""oneDNN's convolutions inside XLA:CPU programs, through XLA's FFI (custom calls).

On CPU, oneDNN's direct convolutions ran 1.2–3× faster than XLA's own forward and backward on ResNet/VGG layer
shapes, and read the activations in the layout the forward wrote them (XLA's kernel gradient needs them transposed);
its Winograd convolutions, where asked for, 2–2.4× faster again on 3×3 kernels.
`aws_jax/onednn_conv.cc` is compiled on first use with the system's C++ compiler against oneDNN's headers
(Debian/Ubuntu: `apt-get install libdnnl-dev g++`), cached by content under `$AWS_JAX_CACHE` (default
~/.cache/aws_jax), and registered as three FFI targets. Where it can't be built, `available()` is False, the reason
is logged once, and `aws_jax.conv` uses XLA's convolutions. `AWS_JAX_ONEDNN=0` turns it off.
"""
import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess
import tempfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')
_TARGETS = {'aws_onednn_conv_forward': 'AwsOnednnConvForward',
            'aws_onednn_conv_input_gradient': 'AwsOnednnConvInputGradient',
            'aws_onednn_conv_kernel_gradient': 'AwsOnednnConvKernelGradient'}


def _compile_command(output: str) -> list[str]:
  return [os.environ.get('CXX', 'c++'), '-O2', '-std=c++17', '-shared', '-fPIC', '-isystem', jax.ffi.include_dir(),
          str(SOURCE), '-ldnnl', '-o', output]


def _build() -> pathlib.Path:
  """The compiled library's path, compiling it if this source, jaxlib and command have not been compiled before."""
  command = _compile_command('{output}')
  digest = hashlib.sha256(SOURCE.read_bytes() + jax.lib.__version__.encode() + ' '.join(command).encode())
  cache = pathlib.Path(os.environ.get('AWS_JAX_CACHE', pathlib.Path.home() / '.cache' / 'aws_jax'))
  path = cache / f'onednn_conv-{digest.hexdigest()[:16]}.so'
  if not path.exists():
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # compile beside, then rename: concurrent builds are safe
      built = os.path.join(tmp, path.name)
      result = subprocess.run(_compile_command(built), capture_output=True, text=True)
      if result.returncode:
        raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'compiler failed')
      os.replace(built, path)
  return path


@functools.cache
def load() -> ctypes.CDLL | None:
  """The compiled library, its FFI targets registered; None where off, not on CPU, or not buildable (logged)."""
  if os.environ.get('AWS_JAX_ONEDNN', '1') == '0' or jax.default_backend() != 'cpu':
    return None
  try:
    library = ctypes.cdll.LoadLibrary(str(_build()))
  except OSError as e:  # no compiler, no oneDNN headers, a failed compile
    logging.warning('aws_jax: oneDNN convolutions unavailable (%s), so XLA runs them (slower on CPU); '
                    '`apt-get install libdnnl-dev g++` enables them.', e)
    return None
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  return library


def available() -> bool:
  """Whether the oneDNN convolutions are built and registered (CPU backend only)."""
  return load() is not None



class _Version(ctypes.Structure):
  _fields_ = [('major', ctypes.c_int), ('minor', ctypes.c_int), ('patch', ctypes.c_int), ('hash', ctypes.c_char_p)]


def version() -> str | None:
  """The linked oneDNN's version, e.g. '2.6.3'; None where `available()` is False."""
  library = load()
  if library is None:
    return None
  library.dnnl_version.restype = ctypes.POINTER(_Version)
  found = library.dnnl_version().contents
  return f'{found.major}.{found.minor}.{found.patch}'


def _call(target: str, shape, *operands, window, winograd):
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method='sequential')(
      *operands, window=np.asarray(window, np.int64), winograd=winograd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, out_shape, window, winograd):
  return _call('aws_onednn_conv_forward', out_shape, x, kernel, window=window, winograd=winograd)


def _conv_forward(x, kernel, out_shape, window, winograd):
  return _conv(x, kernel, out_shape, window, winograd), (x, kernel)


def _conv_backward(out_shape, window, winograd, residuals, cotangent):
  x, kernel = residuals
  return (_call('aws_onednn_conv_input_gradient', x.shape, cotangent, kernel, window=window, winograd=winograd),
          _call('aws_onednn_conv_kernel_gradient', kernel.shape, x, cotangent, window=window, winograd=winograd))


_conv.defvjp(_conv_forward, _conv_backward)


def conv(x, kernel, strides, padding, winograd: bool = False):
  """NHWC × HWIO float32 convolution by oneDNN, with gradients; `padding` is ((top, bottom), (left, right)).
  Grouped where the kernel's I divides x's channels: x.shape[-1] // I groups (depthwise: I = 1).

  `winograd`: by Winograd's F(4×4, 3×3) algorithm where oneDNN has it (3×3 kernels at stride 1 on AVX-512), else
  directly. Winograd's rounding differs from a direct sum's (both float32-accurate: tests/test_onednn.py).

  Raises where `available()` is False, or for negative padding (cropping), which oneDNN can't always express.
  """
  if not available():
    raise RuntimeError('oneDNN convolutions are unavailable here: see the warning logged above.')
  (top, bottom), (left, right) = padding
  out_h = (x.shape[1] + top + bottom - kernel.shape[0]) // strides[0] + 1
  out_w = (x.shape[2] + left + right - kernel.shape[1]) // strides[1] + 1
  if min(top, bottom, left, right) < 0:
    raise ValueError(f'oneDNN convolutions take no negative padding: {padding}')
  # oneDNN wants the bottom/right padding the output uses (negative where strides leave rows unread).
  bottom = (out_h - 1) * strides[0] + kernel.shape[0] - x.shape[1] - top
  right = (out_w - 1) * strides[1] + kernel.shape[1] - x.shape[2] - left
  return _conv(x, kernel, (x.shape[0], out_h, out_w, kernel.shape[3]),
               (*strides, top, bottom, left, right), bool(winograd))
