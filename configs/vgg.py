"""VGG-16-BN on CIFAR-10, the classic lottery-ticket benchmark, with AWS pruning and signed-mask transfer.

Command:
  python -m aws_jax.main --config=configs/vgg.py --workdir=runs/vgg16_c10
  (other depths: --config.model=vgg11|vgg13|vgg19; CIFAR-100: --config.dataset=cifar100; plain LRR: :lrr)

Needs CIFAR-10 prepared for tensorflow-datasets (see README, "Datasets"); --config.download=True fetches it.
Protocol (docs/method.md, CIFAR row): 10 dense warm-up epochs, 15 rounds of 20 % global magnitude pruning + 10 epochs
at the constant lr 0.1 (3.52 % of the conv weights left), then 100-epoch final trainings (lr ÷10 at 50 % and 75 %)
from the last round with seeds 2 and 3. 760 epochs in all; on one modern GPU expect a few hours (not yet measured
with this code). Expected dense accuracy of VGG-16-BN on CIFAR-10 ≈ 93–94 %; the paper's claim is that the AWS
signed-mask transfer lands close to it while the mask-only transfer does not.
`configs/vgg.py:smoke` shrinks everything to a few steps to check an installation.
"""
from aws_jax.config import base_config, check_preset

PRESETS = ('aws', 'lrr', 'smoke')  # aws: the protocol above; lrr: the same without AWS; smoke: a few steps (AWS)


def get_config(preset: str = 'aws'):
  check_preset(preset, PRESETS)
  config = base_config()  # base_config() holds the CIFAR protocol: SGD 0.9, lr 0.1, wd 5e-4, batch 128, 10 + 15×10
  config.dataset = 'cifar10'
  config.model = 'vgg16'
  config.method = 'lrr' if preset == 'lrr' else 'aws'
  config.barrier.reestimate = 'authors'  # barriers as the authors measure them: fresh statistics, one epoch
  if preset == 'smoke':
    config.prune.warmup_epochs = 1
    config.prune.rounds = 2
    config.prune.round_epochs = 1
    config.final.epochs = 1
    config.final.seeds = (2,)
  return config
