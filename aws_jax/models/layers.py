"""The layers every model is built from: PyTorch's normalization defaults, the conv, and the classifier."""
import functools

import flax.linen as nn

from aws_jax import conv
from aws_jax.models.inits import Inits

# PyTorch's BatchNorm and LayerNorm defaults (momentum 0.1 there is 0.9 here); convs without bias by default.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-5)
Conv = functools.partial(nn.Conv, use_bias=False, kernel_init=nn.initializers.kaiming_normal(),
                         conv_general_dilated=conv.conv_general_dilated)
# Strided convs in the models pad k // 2 on every side, as PyTorch does ('SAME' would put the odd row after).


def classifier(inits: Inits, num_classes: int, x):
  """The dense classifier ('classifier') on features `x`."""
  return nn.Dense(num_classes, kernel_init=inits.dense, bias_init=inits.bias(x.shape[-1]), name='classifier')(x)
