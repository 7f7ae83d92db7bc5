"""Convolutional networks: CIFAR-style VGG, the CIFAR ResNets, a small CNN for digits, and ResNet-50."""
import functools
from typing import Sequence

import flax.linen as nn

from aws_jax import conv
from aws_jax.models.inits import FLAX, Inits
from aws_jax.models.layers import BatchNorm, Conv, classifier

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
