"""Plain Flax modules (NHWC). They know nothing of pruning or AWS; the classifier is always named 'classifier'.

Every model takes `inits`, how its layers draw their initial values. `create_model(name, classes, init=...)` picks
them: 'authors' (the default) as the authors' PyTorch code initialises each paper model, and the extra models as
their usual PyTorch definitions do (`AUTHORS_INITS`); 'flax' Flax's defaults (truncated He normal convs, LeCun
normal dense layers, zero biases), aws_jax's initialisation before it followed the authors'. Built directly, a model
uses the 'flax' ones. BatchNorm and LayerNorm start at scale 1, shift 0 under both.
"""
import dataclasses
import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aws_jax import conv
from aws_jax.errors import UserError

# PyTorch's BatchNorm and LayerNorm defaults (momentum 0.1 there is 0.9 here); convs without bias by default.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-5)
Conv = functools.partial(nn.Conv, use_bias=False, kernel_init=nn.initializers.kaiming_normal(),
                         conv_general_dilated=conv.conv_general_dilated)

# PyTorch's default for Conv2d and Linear weights, kaiming_uniform(a=√5): U(±1/√fan_in).
TORCH_DEFAULT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
HE_FAN_IN = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')    # kaiming_normal_(w)
HE_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # kaiming_normal_(w, mode='fan_out')


def torch_bias(fan_in: int) -> Callable:
  """PyTorch's default bias of a Conv2d or Linear layer with `fan_in` inputs per output: U(±1/√fan_in)."""
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class Inits:
  """How a model's layers draw their initial values: conv and dense kernels, and biases."""
  conv: Callable
  dense: Callable
  uniform_bias: bool       # biases U(±1/√fan_in), PyTorch's default; else 0
  stem: Callable | None = None  # the first conv, where it differs from `conv`

  def bias(self, fan_in: int) -> Callable:
    """The bias initialiser of a layer with `fan_in` inputs per output."""
    return torch_bias(fan_in) if self.uniform_bias else nn.initializers.zeros_init()


FLAX = Inits(conv=nn.initializers.kaiming_normal(), dense=nn.initializers.lecun_normal(), uniform_bias=False)
# A PyTorch model without initialisation code of its own: every Conv2d and Linear at PyTorch's default.
PYTORCH_DEFAULT = Inits(conv=TORCH_DEFAULT, dense=TORCH_DEFAULT, uniform_bias=True)
# open_lth's (and akamaster's CIFAR ResNets'): kaiming_normal_ weights of every Conv2d and Linear, default biases.
OPEN_LTH = Inits(conv=HE_FAN_IN, dense=HE_FAN_IN, uniform_bias=True)
# torchvision's ResNet: convs He normal on fan_out, Linear at PyTorch's default; the authors' CIFAR stem is a plain
# Conv2d swapped in after construction, so it keeps PyTorch's default.
TORCHVISION_RESNET = Inits(conv=HE_FAN_OUT, dense=TORCH_DEFAULT, uniform_bias=True)
TORCHVISION_RESNET_CIFAR_STEM = dataclasses.replace(TORCHVISION_RESNET, stem=TORCH_DEFAULT)
# torchvision's MobileNetV2: convs He normal on fan_out, the classifier N(0, 0.01²), zero biases.
TORCHVISION_MOBILENETV2 = Inits(conv=HE_FAN_OUT, dense=nn.initializers.normal(0.01), uniform_bias=False)
# Strided convs below pad k // 2 on every side, as PyTorch does ('SAME' would put the odd row after).

VGG_PLANS = {
    'vgg11': (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    'vgg13': (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
    'vgg19': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
              512, 512, 512, 512, 'M'),
}


class VGG(nn.Module):
  """CIFAR-style VGG with BatchNorm: 3×3 conv stacks and 2×2 max-pools, global average pool, one dense layer."""
  plan: Sequence
  num_classes: int
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    for width in self.plan:
      if width == 'M':
        x = conv.max_pool(x, 2)
      else:
        x = nn.relu(BatchNorm(use_running_average=not train)(Conv(width, (3, 3), kernel_init=self.inits.conv)(x)))
    return classifier(self.inits, self.num_classes, x.mean(axis=(1, 2)))


class BasicBlock(nn.Module):
  """Two 3×3 convs with a residual; a 1×1 conv shortcut where the shape changes."""
  width: int
  stride: int
  inits: Inits

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train)
    conv_ = functools.partial(Conv, kernel_init=self.inits.conv)
    y = nn.relu(norm()(conv_(self.width, (3, 3), strides=self.stride)(x)))
    y = norm()(conv_(self.width, (3, 3))(y))
    if self.stride != 1 or x.shape[-1] != self.width:
      x = norm()(conv_(self.width, (1, 1), strides=self.stride, name='shortcut')(x))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32×32 inputs: a 3×3 stem and three stages of n basic blocks (16, 32, 64 channels)."""
  depth: int
  num_classes: int
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    blocks = (self.depth - 2) // 6
    x = nn.relu(BatchNorm(use_running_average=not train)(Conv(16, (3, 3), kernel_init=self.inits.conv)(x)))
    for stage, width in enumerate((16, 32, 64)):
      for block in range(blocks):
        x = BasicBlock(width, 2 if stage > 0 and block == 0 else 1, self.inits)(x, train)
    return classifier(self.inits, self.num_classes, x.mean(axis=(1, 2)))


class SmallCNN(nn.Module):
  """A four-conv BatchNorm network for small images (the digits preset): two blocks of two convs and a pool."""
  num_classes: int
  widths: Sequence[int] = (32, 64)
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    for width in self.widths:
      for _ in range(2):
        x = nn.relu(BatchNorm(use_running_average=not train)(Conv(width, (3, 3), kernel_init=self.inits.conv)(x)))
      x = conv.max_pool(x, 2)
    return classifier(self.inits, self.num_classes, x.mean(axis=(1, 2)))


def classifier(inits: Inits, num_classes: int, x):
  """The dense classifier ('classifier') on features `x`."""
  return nn.Dense(num_classes, kernel_init=inits.dense, bias_init=inits.bias(x.shape[-1]), name='classifier')(x)


class Bottleneck(nn.Module):
  """torchvision's bottleneck: 1×1 reduce, 3×3 (with the stride), 1×1 expand to 4× width; 1×1 conv shortcut."""
  width: int
  stride: int
  inits: Inits

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train)
    conv_ = functools.partial(Conv, kernel_init=self.inits.conv)
    y = nn.relu(norm()(conv_(self.width, (1, 1))(x)))
    y = nn.relu(norm()(conv_(self.width, (3, 3), strides=self.stride, padding=1)(y)))
    y = norm()(conv_(4 * self.width, (1, 1))(y))
    if self.stride != 1 or x.shape[-1] != 4 * self.width:
      x = norm()(conv_(4 * self.width, (1, 1), strides=self.stride, name='shortcut')(x))
    return nn.relu(x + y)


class ResNet50(nn.Module):
  """ResNet-50. `imagenet`: 7×7 stride-2 stem and 3×3 max-pool; else the CIFAR stem, one 3×3 stride-1 conv."""
  num_classes: int
  imagenet: bool = False
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, use_running_average=not train)
    stem = functools.partial(Conv, kernel_init=self.inits.stem or self.inits.conv)
    if self.imagenet:
      x = nn.relu(norm()(stem(64, (7, 7), strides=2, padding=3)(x)))
      x = conv.max_pool(x, 3, 2, padding=((1, 1), (1, 1)))
    else:
      x = nn.relu(norm()(stem(64, (3, 3))(x)))
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
      for block in range(blocks):
        x = Bottleneck(width, 2 if stage > 0 and block == 0 else 1, self.inits)(x, train)
    return classifier(self.inits, self.num_classes, x.mean(axis=(1, 2)))


# (expansion, width, blocks, stride of the first block) per stage.
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))


class InvertedResidual(nn.Module):
  """MobileNetV2 block: 1×1 expansion, 3×3 depthwise, linear 1×1 projection.

  CIFAR (kuangliu's pytorch-cifar): ReLU, an expansion conv even at expansion 1, and a shortcut on every stride-1
  block (a 1×1 conv where the width changes). ImageNet (torchvision): ReLU6, no expansion conv at expansion 1, and
  an identity shortcut only where the shape is unchanged.
  """
  expansion: int
  width: int
  stride: int
  imagenet: bool
  inits: Inits

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train)
    conv_ = functools.partial(Conv, kernel_init=self.inits.conv)
    act = nn.relu6 if self.imagenet else nn.relu
    channels = self.expansion * x.shape[-1]
    y = x
    if self.expansion != 1 or not self.imagenet:
      y = act(norm()(conv_(channels, (1, 1))(y)))
    y = act(norm()(conv_(channels, (3, 3), strides=self.stride, padding=1, feature_group_count=channels)(y)))
    y = norm()(conv_(self.width, (1, 1))(y))
    if self.stride != 1 or (self.imagenet and x.shape[-1] != self.width):
      return y
    if x.shape[-1] != self.width:
      x = norm()(conv_(self.width, (1, 1), name='shortcut')(x))
    return x + y


class MobileNetV2(nn.Module):
  """MobileNetV2 (width 1). CIFAR: stride 1 in the stem and in the second stage; ImageNet: stride 2 in both."""
  num_classes: int
  imagenet: bool = False
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, use_running_average=not train)
    conv_ = functools.partial(Conv, kernel_init=self.inits.conv)
    act = nn.relu6 if self.imagenet else nn.relu
    x = act(norm()(conv_(32, (3, 3), strides=2 if self.imagenet else 1, padding=1)(x)))
    for stage, (expansion, width, blocks, stride) in enumerate(MOBILENETV2_STAGES):
      if stage == 1 and not self.imagenet:
        stride = 1
      for block in range(blocks):
        x = InvertedResidual(expansion, width, stride if block == 0 else 1, self.imagenet, self.inits)(x, train)
    x = act(norm()(conv_(1280, (1, 1))(x)))
    return classifier(self.inits, self.num_classes, x.mean(axis=(1, 2)))


class SqueezeExcitation(nn.Module):
  """Channel gates from the global average: 1×1 conv to `squeeze` channels, swish, 1×1 conv back, sigmoid."""
  squeeze: int
  inits: Inits

  @nn.compact
  def __call__(self, x):
    conv_ = functools.partial(Conv, kernel_init=self.inits.conv, use_bias=True)
    gates = nn.swish(conv_(self.squeeze, (1, 1), bias_init=self.inits.bias(x.shape[-1]))(
        x.mean(axis=(1, 2), keepdims=True)))
    return x * nn.sigmoid(conv_(x.shape[-1], (1, 1), bias_init=self.inits.bias(self.squeeze))(gates))


class MBConv(nn.Module):
  """EfficientNet block: 1×1 expansion, depthwise conv, squeeze-excitation (to a quarter of the input width),
  linear 1×1 projection; where the shape is unchanged, a residual whose branch is dropped per example
  (drop-connect) with probability `drop_connect`, in training steps only (those that pass a 'dropout' RNG)."""
  expansion: int
  width: int
  kernel: int
  stride: int
  drop_connect: float
  inits: Inits

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train)
    conv_ = functools.partial(Conv, kernel_init=self.inits.conv)
    channels = self.expansion * x.shape[-1]
    expand = conv_(channels, (1, 1))
    if self.expansion == 1:
      # The reference builds the expansion conv and its BatchNorm in every block and skips them at expansion 1:
      # parameters (counted, pruned) that never reach the output. One pixel creates them, and keeps the BatchNorm's
      # statistics updating like any other's, at no cost.
      norm()(expand(x[:1, :1, :1]))
      y = x
    else:
      y = nn.swish(norm()(expand(x)))
    y = nn.swish(norm()(conv_(channels, (self.kernel, self.kernel), strides=self.stride, padding=self.kernel // 2,
                              feature_group_count=channels)(y)))
    y = SqueezeExcitation(x.shape[-1] // 4, self.inits)(y)
    y = norm()(conv_(self.width, (1, 1))(y))
    if self.stride != 1 or x.shape[-1] != self.width:
      return y
    return x + nn.Dropout(self.drop_connect, broadcast_dims=(1, 2, 3), deterministic=not stochastic(self, train))(y)


def stochastic(module: nn.Module, train: bool) -> bool:
  """Whether dropout is on: in training mode with a 'dropout' RNG given (a training step; BatchNorm re-estimation
  runs in training mode without one)."""
  return train and module.has_rng('dropout')


# (expansion, width, blocks, kernel, stride of the first block) per stage.
EFFICIENTNET_B0_STAGES = ((1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
                          (6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1))


class EfficientNetB0(nn.Module):
  """EfficientNet-B0 for CIFAR (kuangliu's pytorch-cifar): stride-1 3×3 stem, swish, no 1×1 head conv, dropout
  before the classifier; block b of 16 drops its residual branch with probability drop_connect · b / 16.

  `drop_connect` is 0 by default, as the authors' runs had it: their code sets 0.2 but never increments the block
  counter b. 0.2 is the schedule they meant."""
  num_classes: int
  dropout: float = 0.2
  drop_connect: float = 0.0
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.swish(BatchNorm(use_running_average=not train)(Conv(32, (3, 3), kernel_init=self.inits.conv)(x)))
    blocks = [(expansion, width, kernel, stride if block == 0 else 1)
              for expansion, width, repeats, kernel, stride in EFFICIENTNET_B0_STAGES for block in range(repeats)]
    for index, (expansion, width, kernel, stride) in enumerate(blocks):
      x = MBConv(expansion, width, kernel, stride, self.drop_connect * index / len(blocks), self.inits)(x, train)
    x = nn.Dropout(self.dropout, deterministic=not stochastic(self, train))(x.mean(axis=(1, 2)))
    return classifier(self.inits, self.num_classes, x)


def channel_shuffle(x, groups: int):
  """Interleaves the channels of `groups` groups (NHWC), as ShuffleNet's view-transpose-view."""
  *spatial, channels = x.shape
  return x.reshape(*spatial, groups, channels // groups).swapaxes(-1, -2).reshape(*spatial, channels)


class ShuffleUnit(nn.Module):
  """ShuffleNet v1 unit: grouped 1×1 conv to a quarter of `width`, channel shuffle, 3×3 depthwise, grouped 1×1
  conv. Stride 2: the output is concatenated after a 3×3 average-pooled input (the unit makes width − input
  channels); stride 1: added to the input. Every conv has a bias."""
  width: int
  stride: int
  groups: int
  inits: Inits

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train)
    conv_ = functools.partial(Conv, use_bias=True, kernel_init=self.inits.conv)
    bias = self.inits.bias
    middle = self.width // 4
    out = self.width - x.shape[-1] if self.stride == 2 else self.width
    y = nn.relu(norm()(conv_(middle, (1, 1), feature_group_count=self.groups,
                             bias_init=bias(x.shape[-1] // self.groups))(x)))
    y = channel_shuffle(y, self.groups)
    y = norm()(conv_(middle, (3, 3), strides=self.stride, padding=1, feature_group_count=middle, bias_init=bias(9))(y))
    y = norm()(conv_(out, (1, 1), feature_group_count=self.groups, bias_init=bias(middle // self.groups))(y))
    if self.stride == 2:
      pooled = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      return nn.relu(jnp.concatenate([pooled, y], axis=-1))
    return nn.relu(x + y)


class ShuffleNet(nn.Module):
  """ShuffleNet v1 for CIFAR (weiaicunzai's pytorch-cifar100): a 3×3 stride-1 stem of 24 channels, then stages of
  `units` units of `widths` channels, each opening with a stride-2 unit; grouped first 1×1 convs in every stage."""
  num_classes: int
  groups: int = 3
  widths: Sequence[int] = (240, 480, 960)
  units: Sequence[int] = (4, 8, 4)
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    stem = Conv(24, (3, 3), use_bias=True, kernel_init=self.inits.conv, bias_init=self.inits.bias(9 * x.shape[-1]))
    x = nn.relu(BatchNorm(use_running_average=not train)(stem(x)))
    for width, units in zip(self.widths, self.units):
      for unit in range(units):
        x = ShuffleUnit(width, 2 if unit == 0 else 1, self.groups, self.inits)(x, train)
    return classifier(self.inits, self.num_classes, x.mean(axis=(1, 2)))


class MlpBlock(nn.Module):
  """Dense to `hidden`, GELU, dense back to the input width."""
  hidden: int
  inits: Inits

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, kernel_init=self.inits.dense)
    y = nn.gelu(dense(self.hidden, bias_init=self.inits.bias(x.shape[-1]))(x), approximate=False)
    return dense(x.shape[-1], bias_init=self.inits.bias(self.hidden))(y)


class MixerBlock(nn.Module):
  """Pre-LayerNorm residual token mixing (an MLP across tokens), then channel mixing (an MLP across channels)."""
  token_expansion: float
  channel_expansion: float
  inits: Inits

  @nn.compact
  def __call__(self, x):
    _, tokens, width = x.shape
    y = LayerNorm()(x).swapaxes(1, 2)
    x = x + MlpBlock(int(tokens * self.token_expansion), self.inits, name='token_mixing')(y).swapaxes(1, 2)
    y = LayerNorm()(x)
    return x + MlpBlock(int(width * self.channel_expansion), self.inits, name='channel_mixing')(y)


class MlpMixer(nn.Module):
  """MLP-Mixer: a patch-embedding conv, `depth` mixer blocks, LayerNorm, mean over tokens, dense classifier."""
  num_classes: int
  patch: int = 16
  width: int = 512
  depth: int = 12
  token_expansion: float = 4
  channel_expansion: float = 0.5
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    # The reference's patch embedding is a Linear on flattened patches: PyTorch's default draws it as this conv.
    x = Conv(self.width, (self.patch, self.patch), strides=self.patch, padding='VALID', use_bias=True,
             kernel_init=self.inits.conv, bias_init=self.inits.bias(self.patch**2 * x.shape[-1]),
             name='patch_embedding')(x)
    x = x.reshape(x.shape[0], -1, self.width)
    for _ in range(self.depth):
      x = MixerBlock(self.token_expansion, self.channel_expansion, self.inits)(x)
    x = LayerNorm()(x)
    return classifier(self.inits, self.num_classes, x.mean(axis=1))


# Plain names are the CIFAR-style variants (CIFAR-100 and Tiny-ImageNet); '_imagenet' ones have the ImageNet stem.
_CONSTRUCTORS = {
    'small_cnn': SmallCNN,
    'resnet20': functools.partial(CifarResNet, 20),
    'resnet56': functools.partial(CifarResNet, 56),
    **{name: functools.partial(VGG, plan) for name, plan in VGG_PLANS.items()},
    'resnet50': ResNet50,
    'resnet50_imagenet': functools.partial(ResNet50, imagenet=True),
    'mobilenetv2': MobileNetV2,
    'mobilenetv2_imagenet': functools.partial(MobileNetV2, imagenet=True),
    'efficientnet_b0': EfficientNetB0,
    'shufflenet': ShuffleNet,
    'mlp_mixer': MlpMixer,
}
MODELS = tuple(_CONSTRUCTORS)
INITS = ('authors', 'flax')

# What 'authors' means for each model: the authors' code for the paper's models (models/utils.py: torchvision's
# ResNet-50 and ImageNet MobileNetV2, their own MobileNetV2, EfficientNet-B0, ShuffleNet and MLP-Mixer with no
# initialisation code, so PyTorch's defaults); for the extra ones, their usual PyTorch definitions: open_lth's
# (VGG, ResNet-20/56), and a plain PyTorch module for small_cnn.
AUTHORS_INITS = {
    'small_cnn': PYTORCH_DEFAULT,
    'resnet20': OPEN_LTH,
    'resnet56': OPEN_LTH,
    **{name: OPEN_LTH for name in VGG_PLANS},
    'resnet50': TORCHVISION_RESNET_CIFAR_STEM,
    'resnet50_imagenet': TORCHVISION_RESNET,
    'mobilenetv2': PYTORCH_DEFAULT,
    'mobilenetv2_imagenet': TORCHVISION_MOBILENETV2,
    'efficientnet_b0': PYTORCH_DEFAULT,
    'shufflenet': PYTORCH_DEFAULT,
    'mlp_mixer': PYTORCH_DEFAULT,
}


def create_model(name: str, num_classes: int, init: str = 'authors', drop_connect: float = 0.0) -> nn.Module:
  """The model called `name` (one of MODELS) with a `num_classes`-way classifier, initialised as `init` says
  (one of INITS; see the module's docstring). `drop_connect`: EfficientNet-B0's (other models have none)."""
  if name not in _CONSTRUCTORS:
    raise UserError(f'unknown model {name!r}; choose one of {", ".join(MODELS)}')
  if init not in INITS:
    raise UserError(f'unknown init {init!r}; choose one of {", ".join(INITS)}')
  options = {'drop_connect': drop_connect} if name == 'efficientnet_b0' else {}
  return _CONSTRUCTORS[name](num_classes=num_classes, inits=AUTHORS_INITS[name] if init == 'authors' else FLAX,
                             **options)


def count_params(params) -> int:
  """Number of scalars in a params tree."""
  return sum(int(np.size(p)) for p in jax.tree.leaves(params))
