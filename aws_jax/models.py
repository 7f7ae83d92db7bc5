"""Plain Flax modules (NHWC). They know nothing of pruning or AWS; the classifier is always named 'classifier'."""
import functools
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from aws_jax.errors import UserError

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here) and He-normal conv init.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
Conv = functools.partial(nn.Conv, use_bias=False, kernel_init=nn.initializers.kaiming_normal())

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

  @nn.compact
  def __call__(self, x, train: bool = False):
    for width in self.plan:
      if width == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nn.relu(BatchNorm(use_running_average=not train)(Conv(width, (3, 3))(x)))
    return nn.Dense(self.num_classes, name='classifier')(x.mean(axis=(1, 2)))


class BasicBlock(nn.Module):
  """Two 3×3 convs with a residual; a 1×1 conv shortcut where the shape changes."""
  width: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train)
    y = nn.relu(norm()(Conv(self.width, (3, 3), strides=self.stride)(x)))
    y = norm()(Conv(self.width, (3, 3))(y))
    if self.stride != 1 or x.shape[-1] != self.width:
      x = norm()(Conv(self.width, (1, 1), strides=self.stride, name='shortcut')(x))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32×32 inputs: a 3×3 stem and three stages of n basic blocks (16, 32, 64 channels)."""
  depth: int
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    blocks = (self.depth - 2) // 6
    x = nn.relu(BatchNorm(use_running_average=not train)(Conv(16, (3, 3))(x)))
    for stage, width in enumerate((16, 32, 64)):
      for block in range(blocks):
        x = BasicBlock(width, 2 if stage > 0 and block == 0 else 1)(x, train)
    return nn.Dense(self.num_classes, name='classifier')(x.mean(axis=(1, 2)))


class SmallCNN(nn.Module):
  """A four-conv BatchNorm network for small images (the digits preset): two blocks of two convs and a pool."""
  num_classes: int
  widths: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for width in self.widths:
      for _ in range(2):
        x = nn.relu(BatchNorm(use_running_average=not train)(Conv(width, (3, 3))(x)))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return nn.Dense(self.num_classes, name='classifier')(x.mean(axis=(1, 2)))


MODELS = ('small_cnn', 'resnet20', 'resnet56', *VGG_PLANS)


def create_model(name: str, num_classes: int) -> nn.Module:
  """The model called `name` (one of MODELS) with a `num_classes`-way classifier."""
  if name in VGG_PLANS:
    return VGG(VGG_PLANS[name], num_classes)
  if name in ('resnet20', 'resnet56'):
    return CifarResNet(int(name[len('resnet'):]), num_classes)
  if name == 'small_cnn':
    return SmallCNN(num_classes)
  raise UserError(f'unknown model {name!r}; choose one of {", ".join(MODELS)}')


def count_params(params) -> int:
  """Number of scalars in a params tree."""
  return sum(int(np.size(p)) for p in jax.tree.leaves(params))
