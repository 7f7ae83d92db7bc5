"""Plain Flax modules (NHWC). They know nothing of pruning or AWS; the classifier is always named 'classifier'.

Every model takes `inits`, how its layers draw their initial values. `create_model(name, classes, init=...)` picks
them: 'authors' (the default) as the authors' PyTorch code initialises each paper model, and the extra models as
their usual PyTorch definitions do (`AUTHORS_INITS`); 'flax' Flax's defaults (truncated He normal convs, LeCun
normal dense layers, zero biases), aws_jax's initialisation before it followed the authors'. Built directly, a model
uses the 'flax' ones. BatchNorm and LayerNorm start at scale 1, shift 0 under both.

The package: `inits` (`Inits` and the PyTorch schemes), `layers` (BatchNorm, LayerNorm, Conv, the classifier),
`convnets` (VGG, ResNets, SmallCNN), `mobile` (MobileNetV2, EfficientNet-B0, ShuffleNet), `mixer` (MLP-Mixer); this
module is the registry, and its names are the package's. To add a model: its module here, built of `layers` and
taking `num_classes` and `inits`; an entry in `_CONSTRUCTORS` and one in `AUTHORS_INITS`; its name in
`config.MODELS`; and a test in tests/test_models.py.
"""
import functools

import flax.linen as nn
import jax
import numpy as np

from aws_jax.errors import UserError
from aws_jax.models.convnets import VGG, VGG_PLANS, BasicBlock, Bottleneck, CifarResNet, ResNet50, SmallCNN
from aws_jax.models.inits import (FLAX, HE_FAN_IN, HE_FAN_OUT, OPEN_LTH, PYTORCH_DEFAULT, TORCH_DEFAULT,
                                  TORCHVISION_MOBILENETV2, TORCHVISION_RESNET, TORCHVISION_RESNET_CIFAR_STEM, Inits,
                                  torch_bias)
from aws_jax.models.layers import BatchNorm, Conv, LayerNorm, classifier
from aws_jax.models.mixer import MixerBlock, MlpBlock, MlpMixer
from aws_jax.models.mobile import (EFFICIENTNET_B0_STAGES, MOBILENETV2_STAGES, EfficientNetB0, InvertedResidual,
                                   MBConv, MobileNetV2, ShuffleNet, ShuffleUnit, SqueezeExcitation, channel_shuffle,
                                   stochastic)

__all__ = ['AUTHORS_INITS', 'INITS', 'MODELS', 'create_model', 'count_params',
           'FLAX', 'HE_FAN_IN', 'HE_FAN_OUT', 'OPEN_LTH', 'PYTORCH_DEFAULT', 'TORCH_DEFAULT', 'TORCHVISION_MOBILENETV2',
           'TORCHVISION_RESNET', 'TORCHVISION_RESNET_CIFAR_STEM', 'Inits', 'torch_bias',
           'BatchNorm', 'Conv', 'LayerNorm', 'classifier',
           'VGG', 'VGG_PLANS', 'BasicBlock', 'Bottleneck', 'CifarResNet', 'ResNet50', 'SmallCNN',
           'EFFICIENTNET_B0_STAGES', 'MOBILENETV2_STAGES', 'EfficientNetB0', 'InvertedResidual', 'MBConv',
           'MobileNetV2', 'ShuffleNet', 'ShuffleUnit', 'SqueezeExcitation', 'channel_shuffle', 'stochastic',
           'MixerBlock', 'MlpBlock', 'MlpMixer']

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
