"""Tests for aws_jax.models: METHOD.md's parameter counts, the prunable layers, and a training forward/backward."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from aws_jax import models, pruning
from aws_jax.errors import UserError

# name: (classes, image side, all parameters, prunable kernel weights); METHOD.md's figures where it gives them.
COUNTS = {
    'resnet50': (100, 32, 23_705_252, 23_447_232),
    'resnet50_imagenet': (1000, 224, 25_557_032, 23_454_912),
    'mobilenetv2': (100, 32, 2_412_212, 2_249_024),
    'mobilenetv2_imagenet': (1000, 224, 3_504_872, 2_189_760),  # not in METHOD.md: torchvision's
    'efficientnet_b0': (100, 32, 3_628_576, 3_547_616),
    'shufflenet': (100, 32, 1_012_108, 879_288),
    'mlp_mixer': (1000, 224, 7_786_968, 7_226_880),
    'resnet20': (10, 32, 272_474, 270_256),
    'resnet56': (10, 32, 855_770, 850_864),
}
NEW_MODELS = ('resnet50', 'resnet50_imagenet', 'mobilenetv2', 'mobilenetv2_imagenet', 'efficientnet_b0',
              'shufflenet', 'mlp_mixer')


def param_shapes(name, classes, image):
  model = models.create_model(name, classes)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3)), train=False))
  return model, variables


def prunable_count(params):
  flat_rule = traverse_util.flatten_dict(pruning.prunable_leaves(params))
  return sum(int(np.size(p)) for path, p in traverse_util.flatten_dict(params).items() if flat_rule[path])


@pytest.mark.parametrize('name', COUNTS)
def test_parameter_and_prunable_counts(name):
  classes, image, total, prunable = COUNTS[name]
  _, variables = param_shapes(name, classes, image)
  assert models.count_params(variables['params']) == total
  assert prunable_count(variables['params']) == prunable


def test_prunable_rule_picks_kernels_but_never_classifier_biases_or_norms():
  _, variables = param_shapes('efficientnet_b0', 100, 32)
  prunable = traverse_util.flatten_dict(pruning.prunable_leaves(variables['params']), sep='/')
  is_norm = traverse_util.flatten_dict(pruning.norm_leaves(variables['params']), sep='/')
  chosen = {path for path, rule in prunable.items() if rule}
  assert chosen == {path for path in prunable if path.endswith('kernel') and not path.startswith('classifier')}
  assert any('SqueezeExcitation' in path for path in chosen)
  assert not chosen & {path for path, norm in is_norm.items() if norm}


def test_mixer_prunes_patch_embedding_and_both_mixings_and_interpolates_layernorm():
  _, variables = param_shapes('mlp_mixer', 1000, 224)
  params = variables['params']
  prunable = traverse_util.flatten_dict(pruning.prunable_leaves(params), sep='/')
  is_norm = traverse_util.flatten_dict(pruning.norm_leaves(params), sep='/')
  assert prunable['patch_embedding/kernel'] and not prunable['classifier/kernel']
  assert prunable['MixerBlock_0/token_mixing/Dense_0/kernel']
  assert prunable['MixerBlock_11/channel_mixing/Dense_1/kernel']
  assert params['MixerBlock_0']['token_mixing']['Dense_0']['kernel'].shape == (196, 784)
  assert params['MixerBlock_0']['channel_mixing']['Dense_0']['kernel'].shape == (512, 256)
  assert sum(is_norm.values()) == 2 * (2 * 12 + 1)  # scale and bias of 2 LayerNorms per block and the last


@pytest.mark.parametrize('name', NEW_MODELS)
def test_training_forward_and_backward(name):
  """One jitted train-mode loss and gradient on 2 images of 32 px (the ImageNet stems reduce them to 1×1)."""
  model, shapes = param_shapes(name, 10, 32)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), shapes)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)

  def loss_fn(params, dropout_key):
    logits, updates = model.apply({**variables, 'params': params}, images, train=True, mutable=['batch_stats'],
                                  rngs={'dropout': dropout_key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])).mean(), (logits, updates)

  # Without LLVM optimisation: it runs twice, so optimising would cost more time than it saves.
  loss_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(
      variables['params'], jax.random.PRNGKey(1)).compile({'xla_backend_optimization_level': 0})
  (loss, (logits, updates)), grads = loss_and_grad(variables['params'], jax.random.PRNGKey(1))
  (_, (other_logits, _)), _ = loss_and_grad(variables['params'], jax.random.PRNGKey(2))
  assert logits.shape == (2, 10) and np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.any(np.asarray(grads['classifier']['kernel']) != 0)
  if 'batch_stats' in variables:
    assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])
  # Only EfficientNet-B0 is stochastic in training (dropout, drop-connect): through the 'dropout' rng.
  assert np.allclose(logits, other_logits) == (name != 'efficientnet_b0')
  if name == 'efficientnet_b0':
    # The reference's unused expansion conv of the first block: a parameter that never reaches the output.
    assert not np.any(np.asarray(grads['MBConv_0']['Conv_0']['kernel']))


def test_channel_shuffle_interleaves_groups_like_view_transpose_view():
  x = jnp.arange(6.0).reshape(1, 1, 1, 6)  # three groups of two channels: (0 1) (2 3) (4 5)
  np.testing.assert_array_equal(models.channel_shuffle(x, 3)[0, 0, 0], [0, 2, 4, 1, 3, 5])


def test_every_model_has_a_classifier_and_cifar_models_take_tiny_imagenet_size():
  """The CIFAR-style models pool globally, so they also run on Tiny-ImageNet's 64 px images."""
  for name in models.MODELS:
    model = models.create_model(name, 7)
    image = 64 if name in ('resnet50', 'mobilenetv2', 'efficientnet_b0', 'shufflenet') else 32
    logits, variables = jax.eval_shape(
        lambda m=model, s=image: m.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3))))
    assert logits.shape == (1, 7) and variables['params']['classifier']['kernel'].shape[-1] == 7


def test_unknown_model_is_a_user_error():
  with pytest.raises(UserError, match='mlp_mixer'):
    models.create_model('resnet51', 10)
