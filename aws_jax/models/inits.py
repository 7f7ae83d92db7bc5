"""How layers draw their initial values: `Inits`, and the schemes of the PyTorch code each model follows."""
import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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
