"""torchvision's ResNet-50 and MobileNetV2 in PyTorch, with torchvision's module names and no torchvision.

As the authors' code (github.com/JungHunOh/AWS_ICLR2025, models/utils.py) builds them: every Conv2d carries a
`fixed_m` mask (a parameter without gradient, so it is in the state_dict) and computes with weight · fixed_m.
"""
import torch
from torch import nn
from torch.nn import functional as F


class MaskedConv2d(nn.Conv2d):
  """A Conv2d whose weight is multiplied by its `fixed_m` mask."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, bias=False, **kwargs)
    self.fixed_m = nn.Parameter(torch.ones(self.weight.shape), requires_grad=False)

  def forward(self, x):
    return F.conv2d(x, self.weight * self.fixed_m, None, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
  """torchvision's: 1×1, 3×3 (the stride), 1×1 to 4× width; `downsample` where the shape changes."""

  def __init__(self, inputs: int, width: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = MaskedConv2d(inputs, width, 1), nn.BatchNorm2d(width)
    self.conv2, self.bn2 = MaskedConv2d(width, width, 3, stride, 1), nn.BatchNorm2d(width)
    self.conv3, self.bn3 = MaskedConv2d(width, 4 * width, 1), nn.BatchNorm2d(4 * width)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or inputs != 4 * width:
      self.downsample = nn.Sequential(MaskedConv2d(inputs, 4 * width, 1, stride), nn.BatchNorm2d(4 * width))

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
  """torchvision's resnet50; `cifar_stem`: the authors' CIFAR / Tiny-ImageNet variant (3×3 conv1, no max-pool)."""

  def __init__(self, num_classes: int, cifar_stem: bool = False):
    super().__init__()
    self.conv1 = MaskedConv2d(3, 64, 3, 1, 1) if cifar_stem else MaskedConv2d(3, 64, 7, 2, 3)
    self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU()
    self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
    inputs = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
      layers = []
      for block in range(blocks):
        layers.append(Bottleneck(inputs, width, 2 if stage > 0 and block == 0 else 1))
        inputs = 4 * width
      setattr(self, f'layer{stage + 1}', nn.Sequential(*layers))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(2048, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def conv_bn_relu6(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
  """torchvision's Conv2dNormActivation: conv (index 0), BatchNorm (1), ReLU6 (2)."""
  return nn.Sequential(MaskedConv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups),
                       nn.BatchNorm2d(outputs), nn.ReLU6())


class InvertedResidual(nn.Module):
  """torchvision's: [1×1 expansion], 3×3 depthwise, linear 1×1 projection, all in `conv`; identity shortcut."""

  def __init__(self, inputs: int, outputs: int, stride: int, expansion: int):
    super().__init__()
    hidden = inputs * expansion
    layers = [conv_bn_relu6(inputs, hidden, 1)] if expansion != 1 else []
    layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), MaskedConv2d(hidden, outputs, 1),
               nn.BatchNorm2d(outputs)]
    self.conv = nn.Sequential(*layers)
    self.use_res_connect = stride == 1 and inputs == outputs

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
  """torchvision's mobilenet_v2 (width 1): `features` 0-18, `classifier` = (Dropout, Linear)."""

  def __init__(self, num_classes: int):
    super().__init__()
    stages = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))
    features, inputs = [conv_bn_relu6(3, 32, 3, 2)], 32
    for expansion, width, blocks, stride in stages:
      for block in range(blocks):
        features.append(InvertedResidual(inputs, width, stride if block == 0 else 1, expansion))
        inputs = width
    features.append(conv_bn_relu6(inputs, 1280, 1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

  def forward(self, x):
    return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def create(model: str, num_classes: int) -> nn.Module:
  """The PyTorch network of an aws_jax model name of `aws_jax.signs.TORCH_MODELS`."""
  return {'resnet50': lambda: ResNet50(num_classes, cifar_stem=True),
          'resnet50_imagenet': lambda: ResNet50(num_classes),
          'mobilenetv2_imagenet': lambda: MobileNetV2(num_classes)}[model]()
