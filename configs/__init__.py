"""One config per setting, each opening with its command. Installed as `aws_jax.configs`: `--config=digits` (or any
file name here, with :PRESET) selects one from any directory; `--config=configs/digits.py` reads the file."""
