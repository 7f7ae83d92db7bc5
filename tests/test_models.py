"""Tests for aws_jax.models: METHOD.md's parameter counts, the prunable layers, and a training forward/backward."""
import functools
import importlib.util

import flax.linen as nn
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


# --- Initialisation (config.init): each layer kind as PyTorch draws it. --------------------------------------------

def torch_draw(kind, shape):
  """PyTorch's own initial weights for a layer of Flax kernel `shape`, in Flax's layout; (weights, biases or None)."""
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  if len(shape) == 2:  # Flax (in, out); PyTorch Linear (out, in)
    layer = torch.nn.Linear(shape[0], shape[1])
  else:  # Flax (h, w, in / groups, out); PyTorch Conv2d (out, in / groups, h, w)
    groups = shape[3] if shape[2] == 1 else 1
    layer = torch.nn.Conv2d(shape[2] * groups, shape[3], shape[:2], groups=groups)
  if kind == 'he_fan_out':
    torch.nn.init.kaiming_normal_(layer.weight, mode='fan_out', nonlinearity='relu')
  elif kind == 'he_fan_in':
    torch.nn.init.kaiming_normal_(layer.weight)
  elif kind == 'normal_0.01':
    torch.nn.init.normal_(layer.weight, 0, 0.01)
  weight = layer.weight.detach().numpy()
  weight = weight.T if len(shape) == 2 else weight.transpose(2, 3, 1, 0)
  return weight, layer.bias.detach().numpy()


# (kind, Flax initialiser, Flax kernel shape): the kernels of the authors' models, one per layer kind.
LAYER_KINDS = [
    ('default', models.TORCH_DEFAULT, (3, 3, 64, 128)),       # a 3×3 conv at PyTorch's default
    ('default', models.TORCH_DEFAULT, (3, 3, 1, 960)),        # depthwise
    ('default', models.TORCH_DEFAULT, (1, 1, 80, 720)),       # grouped pointwise (ShuffleNet: in / groups = 80)
    ('default', models.TORCH_DEFAULT, (512, 2048)),           # a Linear (MLP-Mixer, classifiers)
    ('he_fan_out', models.HE_FAN_OUT, (3, 3, 64, 128)),       # torchvision's ResNet-50 and ImageNet MobileNetV2
    ('he_fan_out', models.HE_FAN_OUT, (3, 3, 1, 960)),        # depthwise: fan_out = 960 · 9
    ('he_fan_in', models.HE_FAN_IN, (3, 3, 64, 128)),         # open_lth's VGG and ResNet-20/56
    ('he_fan_in', models.HE_FAN_IN, (64, 1000)),
    ('normal_0.01', nn.initializers.normal(0.01), (1280, 1000)),  # torchvision's MobileNetV2 classifier
]


def fan_in(shape):
  return int(np.prod(shape[:-1]))


@pytest.mark.parametrize('kind, initializer, shape', LAYER_KINDS)
def test_initial_weights_are_distributed_as_pytorchs(kind, initializer, shape):
  """Bounds, std and mean |w| of a Flax draw equal those of PyTorch's own draw of the layer (within 5 standard
  errors of the two samples), and the analytic values."""
  ours = np.asarray(initializer(jax.random.PRNGKey(0), shape), np.float64)
  std = {'default': 1 / np.sqrt(3 * fan_in(shape)), 'he_fan_in': np.sqrt(2 / fan_in(shape)),
         'he_fan_out': np.sqrt(2 / (shape[-1] * np.prod(shape[:-2]))), 'normal_0.01': 0.01}[kind]
  mean_abs = std * (np.sqrt(3) / 2 if kind == 'default' else np.sqrt(2 / np.pi))
  tolerance = 5 / np.sqrt(ours.size)  # relative: std and mean |w| of n draws err by about 1/√n
  if kind == 'default':
    assert np.max(np.abs(ours)) <= 1 / np.sqrt(fan_in(shape)) < np.max(np.abs(ours)) * (1 + tolerance)
  np.testing.assert_allclose([ours.std(), np.abs(ours).mean()], [std, mean_abs], rtol=tolerance)
  theirs, _ = torch_draw(kind, shape)
  assert theirs.shape == ours.shape
  if kind == 'default':
    assert np.max(np.abs(theirs)) <= 1 / np.sqrt(fan_in(shape)) < np.max(np.abs(theirs)) * (1 + tolerance)
  np.testing.assert_allclose([ours.std(), np.abs(ours).mean()], [theirs.std(), np.abs(theirs).mean()],
                             rtol=2 * tolerance)


def test_biases_are_drawn_as_pytorchs_from_the_layers_fan_in():
  shape = (1, 1, 64, 4096)  # a 1×1 conv, 64 inputs: many biases for the statistics
  ours = np.asarray(models.torch_bias(fan_in(shape))(jax.random.PRNGKey(0), (shape[-1],)), np.float64)
  bound, tolerance = 1 / 8, 5 / np.sqrt(ours.size)
  draws = [ours]
  if importlib.util.find_spec('torch'):
    draws.append(torch_draw('default', shape)[1])
  for draw in draws:
    assert np.max(np.abs(draw)) <= bound < np.max(np.abs(draw)) * (1 + tolerance)
    np.testing.assert_allclose([draw.std(), np.abs(draw).mean()], [bound / np.sqrt(3), bound / 2], rtol=tolerance)
  assert not np.any(models.FLAX.bias(64)(jax.random.PRNGKey(0), (8,)))


def recorded_draws(name, image):
  """(what drew, kernel shape or bias fan-in) for every initial value of `name` under the 'authors' init, in order."""
  calls = []

  def recorder(kind):
    return lambda key, shape, dtype=jnp.float32: (calls.append((kind, shape)), jnp.zeros(shape, dtype))[1]

  class Recording(models.Inits):
    def bias(self, fan_in):
      return lambda key, shape, dtype=jnp.float32: (calls.append(('bias', fan_in)), jnp.zeros(shape, dtype))[1]

  authors = models.AUTHORS_INITS[name]
  inits = Recording(conv=recorder('conv'), dense=recorder('dense'), uniform_bias=authors.uniform_bias,
                    stem=recorder('stem') if authors.stem else None)
  model = models.create_model(name, 10).clone(inits=inits)
  jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3))))
  return calls


@pytest.mark.parametrize('name, image', [('resnet50', 32), ('mobilenetv2_imagenet', 32), ('efficientnet_b0', 32),
                                         ('shufflenet', 32), ('mlp_mixer', 32), ('vgg11', 32)])
def test_every_layer_draws_from_its_kind_and_biases_from_their_layers_fan_in(name, image):
  calls = recorded_draws(name, image)
  kinds = [kind for kind, _ in calls]
  assert kinds[0] == ('stem' if name == 'resnet50' else 'conv') and 'stem' not in kinds[1:]
  assert kinds.count('dense') == (1 + 12 * 2 * 2 if name == 'mlp_mixer' else 1)  # 2 MLPs of 2 layers per block
  for (kind, shape), (next_kind, bias_fan_in) in zip(calls, calls[1:]):
    if next_kind == 'bias':  # a layer's bias comes right after its kernel, from the kernel's fan-in
      assert kind != 'bias' and bias_fan_in == fan_in(shape)
  has_bias = {'resnet50': 1, 'mobilenetv2_imagenet': 1, 'efficientnet_b0': 2 * 16 + 1, 'shufflenet': 1 + 3 * 16 + 1,
              'mlp_mixer': 1 + 4 * 12 + 1, 'vgg11': 1}[name]
  assert kinds.count('bias') == has_bias


def test_authors_init_is_the_reference_codes_per_model():
  """torchvision's schemes where the reference builds torchvision models; PyTorch's defaults for its own models."""
  expected = {'resnet50': models.TORCHVISION_RESNET_CIFAR_STEM, 'resnet50_imagenet': models.TORCHVISION_RESNET,
              'mobilenetv2_imagenet': models.TORCHVISION_MOBILENETV2, 'mobilenetv2': models.PYTORCH_DEFAULT,
              'efficientnet_b0': models.PYTORCH_DEFAULT, 'shufflenet': models.PYTORCH_DEFAULT,
              'mlp_mixer': models.PYTORCH_DEFAULT, 'small_cnn': models.PYTORCH_DEFAULT}
  for name, inits in expected.items():
    assert models.AUTHORS_INITS[name] == inits and models.create_model(name, 10).inits == inits
  assert models.create_model('resnet50', 10, init='flax').inits == models.FLAX
  assert set(models.AUTHORS_INITS) == set(models.MODELS)


def test_small_cnn_authors_init_is_pytorchs_default_biases_included():
  model = models.create_model('small_cnn', 10)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))['params']
  for path, leaf in traverse_util.flatten_dict(params, sep='/').items():
    if path.endswith('kernel'):
      assert 0.9 / np.sqrt(fan_in(leaf.shape)) < np.max(np.abs(leaf)) <= 1 / np.sqrt(fan_in(leaf.shape)), path
  bias = np.asarray(params['classifier']['bias'])
  assert np.all(bias != 0) and np.max(np.abs(bias)) <= 1 / np.sqrt(64)


def test_drop_connect_only_in_a_training_step_with_a_dropout_rng():
  block = models.MBConv(1, 16, 3, 1, drop_connect=0.9, inits=models.FLAX)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4, 4, 16)), jnp.float32)

  @jax.jit
  def outputs(x):
    variables = block.init(jax.random.PRNGKey(0), x, False)
    train_mode = functools.partial(block.apply, variables, x, True, mutable=['batch_stats'])
    return (block.clone(drop_connect=0.0).apply(variables, x, True, mutable=['batch_stats'])[0], train_mode()[0],
            train_mode(rngs={'dropout': jax.random.PRNGKey(1)})[0])

  plain, without_rng, with_rng = outputs(x)
  np.testing.assert_array_equal(without_rng, plain)
  assert not np.allclose(with_rng, plain)
  assert models.create_model('efficientnet_b0', 10).drop_connect == 0
  assert models.create_model('efficientnet_b0', 10, drop_connect=0.2).drop_connect == 0.2
