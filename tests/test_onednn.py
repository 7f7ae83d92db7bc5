"""oneDNN's convolutions equal lax's, forward and backward; models use them on CPU; without them, XLA's run.

They test the library `onednn.load()` picks; `AWS_JAX_ONEDNN_LIBRARY=system` or `=pypi` tests either one.
"""
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import assert_same_values_and_gradients

from aws_jax import conv, models, onednn


def _installed(library: str) -> bool:
  """Whether `library`'s headers are here (oneDNN 2.6's at Debian's path, or PyPI's onednn-devel)."""
  if library == 'system':
    return pathlib.Path('/usr/include/dnnl.hpp').exists()
  try:
    onednn._pypi_dirs()  # pylint: disable=protected-access
  except OSError:
    return False
  return True


# CI installs libdnnl-dev and g++ (.ci/run); elsewhere, without them, only the fallback is tested.
INSTALLED = [name for name in onednn.LIBRARIES if shutil.which('c++') and _installed(name)]
BUILDABLE = os.environ.get('AWS_JAX_ONEDNN_LIBRARY', 'auto') in (*INSTALLED, 'auto') and bool(INSTALLED)
needs_onednn = pytest.mark.skipif(not BUILDABLE or os.environ.get('AWS_JAX_ONEDNN') == '0',
                                  reason='needs g++ and libdnnl-dev or onednn-devel, and oneDNN not turned off by '
                                  'AWS_JAX_ONEDNN=0')
# oneDNN 2.x has float32 Winograd convolutions for AVX-512 only; elsewhere winograd=True runs the direct ones.
AVX512 = 'avx512f' in pathlib.Path('/proc/cpuinfo').read_text() if pathlib.Path('/proc/cpuinfo').exists() else False
DN = ('NHWC', 'HWIO', 'NHWC')


@needs_onednn
@pytest.mark.parametrize('winograd', [False, True])  # where Winograd has no implementation, direct runs
@pytest.mark.parametrize('shape, kernel, strides, padding', [
    ((3, 8, 8, 5), (3, 3, 5, 4), (1, 1), ((1, 1), (1, 1))),
    ((2, 8, 8, 6), (3, 3, 6, 7), (2, 2), ((0, 1), (0, 1))),    # SAME at stride 2: padding on one side
    ((2, 9, 7, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1))),    # odd, unequal sides; bottom padding unused
    ((2, 7, 7, 2), (5, 5, 2, 3), (1, 1), ((2, 2), (2, 2))),
    ((2, 6, 6, 8), (1, 1, 8, 16), (2, 2), ((0, 0), (0, 0))),   # ResNet-50's shortcut: the last row unread
    ((2, 6, 5, 4), (3, 2, 4, 3), (1, 2), ((1, 1), (0, 1))),    # rectangular kernel, unequal strides
    ((2, 8, 8, 32), (3, 3, 32, 48), (1, 1), ((1, 1), (1, 1))),   # what Winograd is used for
    ((2, 10, 7, 32), (3, 3, 32, 16), (1, 1), ((1, 1), (1, 1))),  # partial 4×4 tiles
    ((2, 9, 6, 32), (3, 3, 32, 16), (1, 1), ((0, 1), (1, 0))),   # uneven padding: Winograd's is wrong, so direct
    ((2, 8, 8, 24), (3, 3, 1, 24), (1, 1), ((1, 1), (1, 1))),    # depthwise (MobileNetV2's): 24 groups
    ((2, 9, 9, 16), (3, 3, 1, 16), (2, 2), ((1, 1), (1, 1))),    # depthwise at stride 2
    ((2, 6, 6, 12), (1, 1, 3, 8), (1, 1), ((0, 0), (0, 0))),     # 4 groups of 3 channels in, 2 out (ShuffleNet's)
])
def test_conv_equals_lax_with_gradients(shape, kernel, strides, padding, winograd):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape, np.float32)
  k = rng.standard_normal(kernel, np.float32)
  groups = shape[-1] // kernel[2]
  reference = lambda x, k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN,
                                                    feature_group_count=groups)
  ours = lambda x, k: onednn.conv(x, k, strides, padding, winograd=winograd)
  assert_same_values_and_gradients(reference, ours, x, k)


def _float64_conv_and_vjp(x, k, cotangent):
  """A 3×3 SAME convolution and its input and kernel gradients, summed tap by tap in float64 with numpy."""
  x, k, cotangent = (a.astype(np.float64) for a in (x, k, cotangent))
  h, w = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y, dx, dk = 0, np.zeros_like(padded), np.zeros_like(k)
  for i in range(3):
    for j in range(3):
      y = y + np.einsum('nhwc,co->nhwo', padded[:, i:i + h, j:j + w], k[i, j])
      dx[:, i:i + h, j:j + w] += np.einsum('nhwo,co->nhwc', cotangent, k[i, j])
      dk[i, j] = np.einsum('nhwc,nhwo->co', padded[:, i:i + h, j:j + w], cotangent)
  return y, dx[:, 1:-1, 1:-1], dk


@needs_onednn
@pytest.mark.parametrize('shape, channels', [((4, 8, 8, 32), 48), ((2, 16, 16, 64), 32)])
def test_winograd_is_as_accurate_as_float32_allows(shape, channels):
  """Winograd's transforms round differently from a direct sum: forward and both gradients stay within 1e-5 of
  a float64 reference, relative to its largest entry (direct's and XLA's errors here: 2e-7 to 1e-6, Winograd's:
  up to 2e-6). On AVX-512 with oneDNN 2 its rounding differs from direct's, which shows it ran (oneDNN 3.2 has no
  float32 Winograd there, measured: it runs direct)."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal(shape, np.float32)
  k = (rng.standard_normal((3, 3, shape[-1], channels)) / np.sqrt(9 * shape[-1])).astype(np.float32)
  cotangent = rng.standard_normal((*shape[:3], channels), np.float32)
  exact = _float64_conv_and_vjp(x, k, cotangent)

  def conv_and_vjp(winograd):
    y, vjp = jax.vjp(lambda x, k: onednn.conv(x, k, (1, 1), ((1, 1), (1, 1)), winograd=winograd), x, k)
    return (y, *vjp(cotangent))

  winograd, direct = conv_and_vjp(True), conv_and_vjp(False)
  for ours, reference in zip(winograd, exact):
    assert np.max(np.abs(ours - reference)) <= 1e-5 * np.max(np.abs(reference))
  if AVX512 and onednn.version().startswith('2.'):
    assert not np.array_equal(winograd[0], direct[0])


@needs_onednn
def test_conv_declines_negative_padding():
  """Negative padding crops the input, which oneDNN can't always express: conv_general_dilated runs lax's."""
  x, k = jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 2))
  with pytest.raises(ValueError, match='negative padding'):
    onednn.conv(x, k, (1, 1), ((0, 0), (0, -1)))
  padding = ((0, 0), (-1, 0))
  np.testing.assert_array_equal(conv.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN),
                                lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN))


@needs_onednn
def test_conv_is_vmappable():
  """vmap (the barrier's points, a vmapped train step) runs the custom calls once per element."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, 2, 6, 6, 4), np.float32)
  k = rng.standard_normal((3, 3, 3, 4, 5), np.float32)
  loss = lambda conv_fn: lambda x, k: jnp.sum(conv_fn(x, k) ** 2)
  ours = loss(lambda x, k: onednn.conv(x, k, (1, 1), ((1, 1), (1, 1))))
  reference = loss(lambda x, k: lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=DN))
  results = [jax.jit(jax.vmap(jax.value_and_grad(f, argnums=(0, 1))))(x, k) for f in (ours, reference)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3), *results)


@needs_onednn
def test_models_use_onednn_except_on_tiny_maps():
  big, tiny = jnp.zeros((2, 8, 8, 16)), jnp.zeros((2, 2, 2, 16))
  hlo = lambda layer, x: jax.jit(layer.apply).lower(layer.init(jax.random.PRNGKey(0), x), x).as_text()
  for layer in (models.Conv(8, (3, 3)), models.Conv(8, (1, 1), strides=(2, 2))):
    text = hlo(layer, big)
    assert onednn.target('conv_forward') in text and 'convolution' not in text
  assert 'aws_onednn' not in hlo(models.Conv(8, (3, 3)), tiny)  # an im2col matmul is faster on a 2×2 map
  for x in (big, tiny):  # grouped convolutions (depthwise ones too) have no im2col form: oneDNN's on any map
    for groups in (16, 4):
      text = hlo(models.Conv(16, (3, 3), feature_group_count=groups), x)
      assert onednn.target('conv_forward') in text and 'convolution' not in text


@needs_onednn
def test_models_ask_for_winograd_where_it_suits():
  x = jnp.zeros((8, 8, 8, 32))
  hlo = lambda layer: jax.jit(layer.apply).lower(layer.init(jax.random.PRNGKey(0), x), x).as_text()
  assert 'winograd = true' in hlo(models.Conv(32, (3, 3)))
  assert 'winograd = false' in hlo(models.Conv(32, (3, 3), strides=(2, 2)))
  assert 'winograd = false' in hlo(models.Conv(16, (3, 3)))
  with conv.implementation('onednn_direct'):
    assert 'winograd = false' in hlo(models.Conv(32, (3, 3)))


@pytest.mark.parametrize('in_shape, kernel, strides, out_hw, suits', [
    ((128, 32, 32, 64), (3, 3, 64, 64), (1, 1), (32, 32), True),      # VGG-16's first stage
    ((128, 4, 4, 512), (3, 3, 512, 512), (1, 1), (4, 4), True),       # its 4×4 stage: 128 tiles
    ((16, 4, 4, 512), (3, 3, 512, 512), (1, 1), (4, 4), False),       # 16 tiles: as slow as direct
    ((128, 32, 32, 16), (3, 3, 16, 16), (1, 1), (32, 32), False),     # ResNet-20's first stage: direct wins
    ((128, 32, 32, 3), (3, 3, 3, 64), (1, 1), (32, 32), False),       # an image's 3 channels
    ((128, 32, 32, 64), (3, 3, 64, 128), (2, 2), (16, 16), False),    # stride 2
    ((128, 8, 8, 64), (1, 1, 64, 256), (1, 1), (8, 8), False),        # 1×1
])
def test_winograd_suits(in_shape, kernel, strides, out_hw, suits):
  assert conv.winograd_suits(in_shape, kernel, strides, out_hw) == suits


@pytest.mark.long
@needs_onednn
def test_model_step_matches_xla_convolutions():
  """A ResNet-20 loss and gradients with oneDNN's convolutions (Winograd's on 32 and 64 channels) equal those with
  XLA's. XLA runs independent custom calls at once on its threads: oneDNN's shared scratchpad crashed here."""
  model = models.create_model('resnet20', 10)
  x = np.random.default_rng(2).standard_normal((4, 32, 32, 3), np.float32)
  variables = jax.jit(model.init, static_argnames='train')(jax.random.PRNGKey(0), x, train=False)

  def loss_and_grads():
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
      return jnp.mean(logits ** 2)
    return jax.jit(jax.value_and_grad(loss))(variables['params'])

  ours = loss_and_grads()
  with conv.implementation('xla'):
    plain = loss_and_grads()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5), ours, plain)


def test_unbuildable_onednn_falls_back_to_xla(monkeypatch, tmp_path):
  """No compiler or no oneDNN headers: available() is False, and conv_general_dilated runs XLA's convolution."""
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setenv('AWS_JAX_CACHE', str(tmp_path))
  onednn.load.cache_clear()
  try:
    assert not onednn.available()
    x, k = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2))
    text = jax.jit(conv.conv_general_dilated, static_argnums=(2, 3, 4, 5, 6)).lower(
        x, k, (1, 1), 'SAME', None, None, DN).as_text()
    assert 'convolution' in text and 'aws_onednn' not in text
  finally:
    onednn.load.cache_clear()


@pytest.mark.parametrize('library', INSTALLED)
def test_build_is_cached_by_content(monkeypatch, tmp_path, library):
  """The first use compiles into $AWS_JAX_CACHE; the next finds the library there and compiles nothing."""
  monkeypatch.setenv('AWS_JAX_CACHE', str(tmp_path))
  first = onednn._build(library)  # pylint: disable=protected-access
  assert first.parent == tmp_path and first.exists()
  monkeypatch.setattr(onednn.subprocess, 'run', lambda *args, **kwargs: pytest.fail('compiled again'))
  assert onednn._build(library) == first  # pylint: disable=protected-access


@needs_onednn
def test_each_choice_jits_its_own_convolutions():
  x, k = jnp.ones((8, 8, 8, 32)), jnp.ones((3, 3, 32, 32))
  layer = lambda x, k: conv.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=DN)
  hlo = {impl: jax.jit(conv.using(impl, layer)).lower(x, k).as_text() for impl in conv.IMPLS}
  assert onednn.target('conv_forward') in hlo['auto'] and 'winograd = true' in hlo['auto']
  assert hlo['onednn'] == hlo['auto']
  assert onednn.target('conv_forward') in hlo['onednn_direct'] and 'winograd = false' in hlo['onednn_direct']
  assert 'aws_onednn' not in hlo['xla'] and 'aws_onednn' not in hlo['lax']


def test_onednn_turned_off_by_the_environment_means_xla(monkeypatch):
  monkeypatch.setenv('AWS_JAX_ONEDNN', '0')
  onednn.load.cache_clear()
  try:
    assert conv.resolve('onednn') == conv.resolve('auto') == 'xla'
  finally:
    onednn.load.cache_clear()


@needs_onednn
def test_the_library_asked_for_is_the_one_used():
  """AWS_JAX_ONEDNN_LIBRARY picks the build; unset, the first of DEFAULT_ORDER installed here. PyPI's is oneDNN 3."""
  asked = os.environ.get('AWS_JAX_ONEDNN_LIBRARY')
  assert onednn.library() == (asked or next(name for name in onednn.DEFAULT_ORDER if name in INSTALLED))
  if onednn.library() == 'pypi':
    assert onednn.version().startswith('3.')


@pytest.mark.parametrize('asked', ['pypi', 'no-such-library'])
def test_a_library_asked_for_but_missing_means_xla(monkeypatch, asked):
  """Asked for a library that is not installed (or not one of LIBRARIES), the convolutions are XLA's: no other
  oneDNN is loaded in its place."""
  def missing(name):
    raise onednn.importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(onednn.importlib.metadata, 'files', missing)
  monkeypatch.setenv('AWS_JAX_ONEDNN_LIBRARY', asked)
  onednn.load.cache_clear()
  try:
    assert onednn.library() is None and onednn.version() is None
    assert conv.resolve('onednn') == conv.resolve('auto') == 'xla'
  finally:
    onednn.load.cache_clear()
