"""The time account's arithmetic on a fake clock: nested blocks and compilation counted once, records merged."""
from aws_jax import timing


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_nested_blocks_and_compilation_count_once(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(timing.time, 'perf_counter', clock)
  monkeypatch.setattr(timing, '_compiled_seconds', [0.0])
  timer = timing.Timer()
  with timer('train'):
    clock.now += 5.0
    with timer('eval'):
      clock.now += 2.0
      timing._compiled_seconds[0] += 0.5  # a compilation inside the evaluation
    clock.now += 1.0
    timing._compiled_seconds[0] += 0.25  # and one in the training, outside it
  with timer('checkpoint'):
    clock.now += 0.5
  assert timer.fields() == {'time_train_s': 5.75, 'time_eval_s': 1.5, 'time_checkpoint_s': 0.5,
                            'time_compile_s': 0.75}
  assert timing.total(timer.fields()) == 8.5  # the clock's whole advance, each second once
  assert timer.fields(0.5)['time_train_s'] == 2.875  # a share, for seeds trained together


def test_merged_sums_time_fields_and_keeps_the_last_other_value():
  summary = {'round': 3, 'time_train_s': 4.0, 'time_eval_s': 1.0, 'wall_s': 9.0}
  analysis = {'psi_reset_barrier': 0.5, 'time_eval_s': 0.25, 'time_barrier_s': 2.0, 'round': 3}
  assert timing.merged(summary, analysis) == {'round': 3, 'time_train_s': 4.0, 'time_eval_s': 1.25, 'wall_s': 9.0,
                                              'psi_reset_barrier': 0.5, 'time_barrier_s': 2.0}
  assert timing.merged() == {}
