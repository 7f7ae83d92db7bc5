"""Each faster formulation in aws_jax.conv equals the plain op, forward and backward, and is used where meant.

The routes for XLA's own convolutions are tested with oneDNN off (`without_onednn`); tests/test_onednn.py has its.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import assert_same_values_and_gradients

from aws_jax import conv, models
from aws_jax.errors import UserError


# What these tests check exists on the CPU only: off it, every choice of convolutions resolves to 'lax'.
cpu_routing = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='CPU convolution routing')


@pytest.fixture(name='without_onednn')
def fixture_without_onednn():
  with conv.implementation('xla'):
    yield


@pytest.mark.parametrize('size, kernel, strides, padding, cin, cout', [
    (2, 3, 1, 'SAME', 8, 5),
    (4, 3, 1, 'SAME', 3, 4),
    (4, 3, 2, 'SAME', 6, 7),
    (5, 3, 2, ((1, 1), (1, 1)), 4, 4),
    (4, 1, 2, 'VALID', 6, 3),
    (3, 3, 1, 'VALID', 2, 2),
    (4, 5, 1, ((2, 2), (2, 2)), 3, 2),
])
def test_im2col_equals_lax_conv_with_gradients(size, kernel, strides, padding, cin, cout):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, size, size, cin), np.float32)
  k = rng.standard_normal((kernel, kernel, cin, cout), np.float32)
  dn = ('NHWC', 'HWIO', 'NHWC')
  reference = lambda x, k: lax.conv_general_dilated(x, k, (strides, strides), padding, dimension_numbers=dn)
  pads = conv._explicit_padding(padding, x.shape[1:3], k.shape[:2], (strides, strides))  # pylint: disable=protected-access
  ours = lambda x, k: conv.im2col_conv(x, k, (strides, strides), pads)
  assert_same_values_and_gradients(reference, ours, x, k)


@cpu_routing
@pytest.mark.usefixtures('without_onednn')
def test_models_route_small_maps_to_im2col_and_keep_lax_results():
  """A VGG stage on a 2×2 map: same output as plain nn.Conv with the same params, and no XLA conv in it."""
  x = np.random.default_rng(1).standard_normal((2, 2, 2, 16), np.float32)
  ours = models.Conv(8, (3, 3))
  plain = nn.Conv(8, (3, 3), use_bias=False)
  params = ours.init(jax.random.PRNGKey(2), x)
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
  hlo = jax.jit(ours.apply).lower(params, x).as_text()
  assert 'convolution' not in hlo
  big = jnp.zeros((2, 8, 8, 16))
  assert 'convolution' in jax.jit(ours.apply).lower(ours.init(jax.random.PRNGKey(2), big), big).as_text()
  pointwise = models.Conv(8, (1, 1), strides=(2, 2))  # 1×1 convs are matmuls on every map size
  assert 'convolution' not in jax.jit(pointwise.apply).lower(pointwise.init(jax.random.PRNGKey(2), big), big).as_text()


@pytest.mark.parametrize('size, window, stride, padding', [
    (8, 2, None, ((0, 0), (0, 0))),
    (9, 3, None, ((0, 0), (0, 0))),
    (7, 3, 2, ((1, 1), (1, 1))),  # ResNet-50's ImageNet stem pool: overlapping windows, left to nn.max_pool
])
def test_max_pool_equals_flax_with_gradients(size, window, stride, padding):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, size, size, 3), np.float32)
  stride = stride or window
  reference = lambda x: nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)
  ours = lambda x: conv.max_pool(x, window, stride, padding)
  cotangent = rng.standard_normal(jax.eval_shape(reference, x).shape, np.float32)
  for f in (reference, ours):
    assert f(x).shape == cotangent.shape
  np.testing.assert_array_equal(jax.jit(ours)(x), reference(x))
  grad = lambda f: jax.jit(lambda x: jax.vjp(f, x)[1](cotangent)[0])(x)
  np.testing.assert_array_equal(grad(ours), grad(reference))


@cpu_routing
def test_tiled_max_pool_gradient_has_no_scatter():
  x = jnp.zeros((2, 8, 8, 4))
  scatters = lambda pool: jax.jit(jax.grad(lambda x: pool(x).sum())).lower(x).compile().as_text().count(' scatter(')
  assert scatters(lambda x: conv.max_pool(x, 2)) == 0
  assert scatters(lambda x: nn.max_pool(x, (2, 2), (2, 2))) > 0  # what the slices avoid; if XLA stops, drop them


@cpu_routing
@pytest.mark.usefixtures('without_onednn')
def test_compiler_options_compile_and_keep_results():
  """The options are accepted by XLA (a wrong name or enum value fails at compile) and change no result."""
  rng = np.random.default_rng(4)
  x = rng.standard_normal((4, 8, 8, 3), np.float32)
  k = rng.standard_normal((3, 3, 3, 5), np.float32)

  def loss(x, k):
    y = conv.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jnp.mean(y, axis=(0, 1, 2)) ** 2)

  options = conv.compiler_options()
  assert options == conv.CPU_COMPILER_OPTIONS  # tests run on CPU
  ours = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), compiler_options=options)(x, k)
  plain = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, plain)


@cpu_routing
@pytest.mark.usefixtures('without_onednn')
@pytest.mark.parametrize('channels', [4, conv.MATERIALIZE_MAX_CHANNELS + 1])
def test_backward_from_materialized_input_equals_lax(channels):
  """Few input channels: the backward pass reads its input from an identity matmul, with lax's exact gradients."""
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, 6, 6, channels), np.float32)
  k = rng.standard_normal((3, 3, channels, 3), np.float32)
  scale = rng.standard_normal(channels).astype(np.float32)
  dn = ('NHWC', 'HWIO', 'NHWC')

  def loss(conv_fn, x, k, scale):
    h = jax.nn.relu(x * scale + 1.0)  # the kind of chain XLA would recompute inside the kernel gradient
    return jnp.sum(conv_fn(h, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn) ** 2)

  grads = [jax.jit(jax.grad(functools.partial(loss, f), argnums=(0, 1, 2)))(x, k, scale)
           for f in (lax.conv_general_dilated, conv.conv_general_dilated)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *grads)
  jaxpr = str(jax.make_jaxpr(functools.partial(loss, conv.conv_general_dilated))(x, k, scale))
  assert ('custom_vjp_call' in jaxpr) == (channels <= conv.MATERIALIZE_MAX_CHANNELS)


def test_identity_matmul_is_exact():
  x = np.random.default_rng(6).standard_normal((3, 5, 7), np.float32) * 1e30
  np.testing.assert_array_equal(jax.jit(conv.identity_matmul)(x), x)


def test_compiler_options_fall_back_to_xla_defaults_when_refused(monkeypatch):
  """A later jaxlib may rename the experimental option: training must still compile, with XLA's defaults."""
  monkeypatch.setattr(conv, 'CPU_COMPILER_OPTIONS', {'xla_cpu_experimental_ynn_fusion_type': 'NO_SUCH_FUSION_TYPE'})
  conv.compiler_options.cache_clear()
  try:
    assert conv.compiler_options() is None
  finally:
    conv.compiler_options.cache_clear()


@cpu_routing
def test_using_makes_the_choice_part_of_the_function():
  """Two choices of the same function jit to two programs: the one traced first doesn't leak into the other."""
  x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  layer = lambda x, k: conv.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  kernel_grad = lambda x, k: jax.grad(lambda k: jnp.sum(layer(x, k) ** 2))(k)
  hlo = lambda impl: jax.jit(conv.using(impl, kernel_grad)).lower(x, k).as_text()
  assert 'convolution' in hlo('lax') and 'dot_general' not in hlo('lax')
  assert 'dot_general' in hlo('xla')  # few channels: the input kept for the backward pass by an identity matmul
  assert conv.resolve('auto') in ('onednn', 'xla')  # tests run on one CPU device
  with conv.implementation('lax'):
    assert conv.resolve() == 'lax'
    assert conv.resolve('xla') == 'xla'
  assert conv.resolve() == conv.resolve('auto')


@cpu_routing
def test_environment_overrides_the_choice(monkeypatch):
  monkeypatch.setenv('AWS_JAX_WINOGRAD', '0')
  assert conv.resolve('onednn') in ('onednn_direct', 'xla')  # 'xla' where oneDNN is off or unbuilt
  assert conv.resolve('xla') == 'xla'


def test_unknown_choice_is_a_user_error():
  with pytest.raises(UserError, match='not one of auto, onednn'):
    conv.using('cudnn', jnp.negative)


@cpu_routing
@pytest.mark.parametrize('size, strides, padding', [(8, 1, ((1, 1), (1, 1))), (8, 2, ((1, 1), (1, 1))),
                                                    (7, 2, ((0, 1), (0, 1))), (4, 1, ((0, 0), (0, 0)))])
def test_depthwise_equals_lax_grouped_conv_with_gradients(size, strides, padding):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, size, size, 6), np.float32)
  k = rng.standard_normal((3, 3, 1, 6), np.float32)
  dimensions = ('NHWC', 'HWIO', 'NHWC')
  reference = lambda x, k: lax.conv_general_dilated(x, k, (strides, strides), padding, dimension_numbers=dimensions,
                                                    feature_group_count=6)
  ours = conv.using('xla', lambda x, k: conv.conv_general_dilated(  # under 'onednn': oneDNN's (test_onednn.py)
      x, k, (strides, strides), padding, dimension_numbers=dimensions, feature_group_count=6))
  jaxpr = str(jax.make_jaxpr(ours)(x, k))
  assert 'feature_group_count' not in jaxpr and 'aws_onednn' not in jaxpr  # the shifted sum, not a grouped conv
  assert_same_values_and_gradients(reference, ours, x, k)
