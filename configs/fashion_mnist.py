"""A study on Fashion-MNIST (28×28 grey) with small_cnn at 89.3 % sparsity: AWS vs LRR, every start, 3 seeds.

Command:
  python -m aws_jax.study --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist_study

Data: Debian's `dataset-fashion-mnist` package (read from /usr/share/datasets/fashion-mnist), or tfds. To fit an
hour on 2 CPU cores it trains on the first 10,000 of the 60,000 training images (`train_examples`) and tests on all
10,000 test images. The grid: AWS and LRR pruning stages (2 warm-up epochs, 10 rounds of 20 % global magnitude
pruning + 1 epoch each: 10.74 % of the conv weights left; ψ-reset barrier on 3 points and recalibrated accuracy after
every round), then from each method's last round the starts signed, mask, random_signs and random_mask, and a dense
network, 3 epochs each, seeds 2, 3 and 4: 27 final trainings, 105 training epochs in all.
Runtime and results: README, "Studies" (measured on 2 CPU cores). `--config.train_examples=0` uses the whole
training set (about 6× longer); on a GPU the full grid takes minutes.
"""
from aws_jax.config import base_config


def get_config():
  config = base_config()
  config.dataset = 'fashion_mnist'
  config.model = 'small_cnn'
  config.train_examples = 10_000    # of 60,000: the first 10,000 training images
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.optimizer.lr = 0.05
  config.prune.warmup_epochs = 2
  config.prune.rounds = 10          # 0.8^10: 10.74 % of the prunable weights left
  config.prune.round_epochs = 1
  config.final.epochs = 3
  config.checkpoint_every_epochs = 3
  config.barrier.points = 3         # α = 0, 0.5, 1
  config.barrier.bn_batches = 10    # BatchNorm statistics at each α (and for the recalibrated accuracy): 10 batches
  config.study.methods = ('aws', 'lrr')
  config.study.seeds = (2, 3, 4)    # study.starts: the default, all five
  return config
