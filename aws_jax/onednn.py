"""oneDNN's convolutions inside XLA:CPU programs, through XLA's FFI (custom calls).

On CPU, oneDNN's direct convolutions ran 1.2–3× faster than XLA's own forward and backward on ResNet/VGG layer
shapes, and read the activations in the layout the forward wrote them (XLA's kernel gradient needs them transposed);
its Winograd convolutions, where asked for, 2–2.4× faster again on 3×3 kernels.
`aws_jax/onednn_conv.cc` is compiled on first use with the system's C++ compiler against one of two oneDNN builds
(`LIBRARIES`), cached by content under `$AWS_JAX_CACHE` (default ~/.cache/aws_jax), and registered as three FFI
targets:
- 'system': the compiler's own search paths (Debian/Ubuntu: `apt-get install libdnnl-dev g++`, oneDNN 2.6,
  OpenMP-threaded, with float32 Winograd convolutions on AVX-512).
- 'pypi': PyPI's `onednn-devel` (`pip install -e ".[onednn]"`: oneDNN 3.13, TBB-threaded, CPU engine on SYCL; about
  2 GB with the Intel SYCL and OpenCL runtimes it pulls in), found through the installed packages' file lists. Its
  CPU device is OpenCL's, whose ICD file in the wheel names a path that does not exist: `load()` adds the wheel's
  libintelocl.so to `OCL_ICD_FILENAMES` before loading it.
`AWS_JAX_ONEDNN_LIBRARY=system` or `=pypi` picks one; unset, `load()` tries `DEFAULT_ORDER`, first that loads.
Where none can be built or loaded, `available()` is False, the reason is logged once, and `aws_jax.conv` uses XLA's
convolutions. `AWS_JAX_ONEDNN=0` turns it off. One library per process: the choice is read once.
"""
import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import subprocess
import tempfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from aws_jax import caches

SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')
LIBRARIES = ('system', 'pypi')
DEFAULT_ORDER = ('system', 'pypi')
_SYMBOLS = {'conv_forward': 'AwsOnednnConvForward', 'conv_input_gradient': 'AwsOnednnConvInputGradient',
            'conv_kernel_gradient': 'AwsOnednnConvKernelGradient'}
_INSTALL = {'system': '`apt-get install libdnnl-dev g++`', 'pypi': '`pip install onednn-devel` and a C++ compiler'}


def _pypi_dirs() -> tuple[pathlib.Path, pathlib.Path]:
  """The include directory of PyPI's onednn-devel and the library directory of its onednn; OSError where missing."""
  found = []
  for dist, suffix in (('onednn-devel', 'include/oneapi/dnnl/dnnl.hpp'), ('onednn', 'libdnnl.so')):
    try:
      files = importlib.metadata.files(dist) or ()
    except importlib.metadata.PackageNotFoundError as e:
      raise OSError(f'{dist} is not installed') from e
    path = next((f.locate().resolve() for f in files if f.as_posix().endswith(suffix)), None)
    if path is None:
      raise OSError(f'{dist} has no {suffix}')
    found.append(path)
  return found[0].parents[2], found[1].parent


def _compile_command(library: str, output: str) -> list[str]:
  command = [os.environ.get('CXX', 'c++'), '-O2', '-std=c++17', '-shared', '-fPIC', '-isystem', jax.ffi.include_dir()]
  if library == 'system':
    return [*command, str(SOURCE), '-ldnnl', '-o', output]
  include, lib = _pypi_dirs()
  # DT_RPATH, not RUNPATH: it also finds libdnnl's own dependencies (libtbb, libsycl) in the wheel's directory.
  return [*command, '-isystem', str(include), str(SOURCE), '-L', str(lib), '-ldnnl',
          f'-Wl,--disable-new-dtags,-rpath,{lib}', '-o', output]


def _build(library: str) -> pathlib.Path:
  """The compiled library's path, compiling it if this source, jaxlib and command have not been compiled before."""
  command = _compile_command(library, '{output}')
  digest = hashlib.sha256(SOURCE.read_bytes() + jax.lib.__version__.encode() + ' '.join(command).encode())
  cache = caches.directory()
  path = cache / f'onednn_conv-{digest.hexdigest()[:16]}.so'
  if not path.exists():
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # compile beside, then rename: concurrent builds are safe
      built = os.path.join(tmp, path.name)
      result = subprocess.run(_compile_command(library, built), capture_output=True, text=True)
      if result.returncode:
        raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'compiler failed')
      os.replace(built, path)
  return path


def _open(library: str) -> ctypes.CDLL:
  """`library`'s compiled convolutions, loaded; OSError where they can't be built or oneDNN finds no CPU engine."""
  if library == 'pypi':  # the SYCL CPU device, through the wheel's OpenCL runtime (its ICD file's path is wrong)
    icd = str(_pypi_dirs()[1] / 'libintelocl.so')
    known = [f for f in os.environ.get('OCL_ICD_FILENAMES', '').split(':') if f]
    if icd not in known:
      os.environ['OCL_ICD_FILENAMES'] = ':'.join([*known, icd])
  loaded = ctypes.cdll.LoadLibrary(str(_build(library)))
  loaded.dnnl_engine_get_count.restype = ctypes.c_size_t
  if not loaded.dnnl_engine_get_count(1):  # dnnl_cpu
    raise OSError('oneDNN finds no CPU engine (with its SYCL runtime: no OpenCL CPU device)')
  return loaded


@functools.cache
def load() -> tuple[str, ctypes.CDLL] | None:
  """The oneDNN build used (one of LIBRARIES) and its compiled convolutions, their FFI targets registered; None
  where off, not on CPU, or none can be built and loaded (logged)."""
  if os.environ.get('AWS_JAX_ONEDNN', '1') == '0' or jax.default_backend() != 'cpu':
    return None
  asked = os.environ.get('AWS_JAX_ONEDNN_LIBRARY', '')
  if asked and asked not in LIBRARIES:
    logging.warning('aws_jax: AWS_JAX_ONEDNN_LIBRARY=%s is not one of %s, so XLA runs the convolutions.', asked,
                    ', '.join(LIBRARIES))
    return None
  errors = []
  for name in (asked,) if asked else DEFAULT_ORDER:
    try:
      loaded = _open(name)
    except OSError as e:  # no compiler, no oneDNN headers, a failed compile, no CPU engine
      errors.append(f'{name}: {e}; {_INSTALL[name]} enables it')
      continue
    for kind, symbol in _SYMBOLS.items():
      jax.ffi.register_ffi_target(f'aws_onednn_{name}_{kind}', jax.ffi.pycapsule(getattr(loaded, symbol)),
                                  platform='cpu')
    return name, loaded
  logging.warning('aws_jax: oneDNN convolutions unavailable (%s), so XLA runs them (slower on CPU).',
                  ' | '.join(errors))
  return None


def library() -> str | None:
  """The oneDNN build the convolutions use, one of LIBRARIES; None where `available()` is False."""
  return load() and load()[0]


def target(kind: str) -> str:
  """The FFI target of `kind` ('conv_forward', 'conv_input_gradient' or 'conv_kernel_gradient') in `library()`."""
  return f'aws_onednn_{library()}_{kind}'


def available() -> bool:
  """Whether the oneDNN convolutions are built and registered (CPU backend only)."""
  return load() is not None


class _Version(ctypes.Structure):
  _fields_ = [('major', ctypes.c_int), ('minor', ctypes.c_int), ('patch', ctypes.c_int), ('hash', ctypes.c_char_p)]


def version() -> str | None:
  """The linked oneDNN's version, e.g. '2.6.3'; None where `available()` is False."""
  if not available():
    return None
  loaded = load()[1]
  loaded.dnnl_version.restype = ctypes.POINTER(_Version)
  found = loaded.dnnl_version().contents
  return f'{found.major}.{found.minor}.{found.patch}'


def _call(kind: str, shape, *operands, window, winograd):
  return jax.ffi.ffi_call(target(kind), jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method='sequential')(
      *operands, window=np.asarray(window, np.int64), winograd=winograd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, out_shape, window, winograd):
  return _call('conv_forward', out_shape, x, kernel, window=window, winograd=winograd)


def _conv_forward(x, kernel, out_shape, window, winograd):
  return _conv(x, kernel, out_shape, window, winograd), (x, kernel)


def _conv_backward(out_shape, window, winograd, residuals, cotangent):
  x, kernel = residuals
  return (_call('conv_input_gradient', x.shape, cotangent, kernel, window=window, winograd=winograd),
          _call('conv_kernel_gradient', kernel.shape, x, cotangent, window=window, winograd=winograd))


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
