"""Mobile networks: MobileNetV2, EfficientNet-B0 and ShuffleNet v1, built of depthwise and grouped convs."""
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from aws_jax.models.inits import FLAX, Inits
from aws_jax.models.layers import BatchNorm, Conv, classifier

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
