"""The paper's CIFAR-100 runs: ResNet-50, MobileNetV2, EfficientNet-B0 or ShuffleNet, AWS then signed-mask transfer.

Command:
  python -m aws_jax.main --config=configs/cifar100.py:resnet50 --workdir=runs/c100_resnet50
  (presets: resnet50, mobilenetv2, efficientnet_b0, shufflenet; plain LRR: --config.method=lrr)

Needs CIFAR-100 prepared for tensorflow-datasets (see README, "Datasets"); --config.download=True fetches it.
Protocol (docs/method.md, CIFAR-100 row): SGD momentum 0.9, lr 0.1 (MobileNetV2 0.05), weight decay 5e-4, batch 128;
10 dense warm-up epochs, 15 rounds of 20 % global magnitude pruning + 10 epochs at the constant lr (3.52 % of the
prunable weights left), then 100-epoch final trainings (lr ÷10 at 50 % and 75 %) from the last round, for the three
starts and seeds 2 and 3: 760 epochs in all. Expected runtime on one H100, an estimate (not measured): ResNet-50
about 3 hours, the three small networks about 1–2 hours each (XLA's FLOP count × 3 at ~35 TFLOP/s for ResNet-50;
the depthwise networks are bound by memory and per-step overhead instead).
"""
from aws_jax.config import base_config, check_preset

PRESETS = ('resnet50', 'mobilenetv2', 'efficientnet_b0', 'shufflenet')  # each the model of that name


def get_config(preset: str = 'resnet50'):
  check_preset(preset, PRESETS)
  config = base_config()  # base_config() holds the CIFAR protocol: SGD 0.9, wd 5e-4, batch 128, 10 + 15×10, 100 epochs
  config.dataset = 'cifar100'
  config.model = preset
  config.optimizer.lr = 0.05 if preset == 'mobilenetv2' else 0.1
  config.barrier.reestimate = 'authors'  # barriers as the authors' script measures them: fresh BatchNorm statistics,
                                         # then one epoch of augmented batches (barrier.bn_batches=-1) at momentum 0.1
  return config
