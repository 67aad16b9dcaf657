"""The four method presets run end to end in mmengine's Runner on YOLOX-tiny
(and FCP's fine residual mode), reaching the FLOPs target with the runtime
kept consistent."""
import math

import pytest
import torch
from mmengine.runner import Runner
from test_hook_training import pruning_cfg, shapes

from mmprune import apis
from mmprune.allocators.schedule import PruningSchedule


class _Flat(PruningSchedule):
    """Every event targets the final ratio."""

    def target_at(self, event: int) -> float:
        return self.target


@pytest.mark.parametrize('method', ['acp_tp', 'bpc', 'fcp', 'gcp_frs'])
def test_method_prunes_to_target_in_training(method, tmp_path, mmdet_config,
                                             synth_data):
    # one event after epoch 1 (ACP-TP: select there, cut after epoch 2)
    hook = dict(
        method=method,
        target=0.6,
        begin=1,
        end=1,
        interval=1,
        scoring_batches=1)
    cfg = pruning_cfg(mmdet_config, synth_data, tmp_path, max_epochs=2, **hook)
    cfg.train_cfg.val_interval = 100  # no validation: keep the test short
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model
    ph = [h for h in runner.hooks
          if type(h).__name__ == 'ChannelPruningHook'][0]
    ratio = apis.cost_model(model, (128, 128)).flops() / \
        ph.state['dense_cost']
    assert ratio <= 0.6 + 1e-9 and ratio >= 0.5, ratio
    assert ph.residual_mode == ('fine' if method in ('fcp',
                                                     'gcp_frs') else 'coupled')
    ema = [h for h in runner.hooks if type(h).__name__ == 'EMAHook'][0]
    assert shapes(ema.ema_model.module) == shapes(model)
    assert ph.state['pending'] is None  # soft selections were all cut
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 128, 128), None, mode='tensor')
    assert all(math.isfinite(float(t.abs().max())) for lvl in out for t in lvl)


def test_acp_tp_event_with_target_met_drops_stale_selection(
        tmp_path, mmdet_config, synth_data):
    """An ACP-TP event that finds its target already met (the previous cut
    overshot) selects nothing; the TPP penalty must then forget the cut
    selection, whose channel positions refer to the old widths (found by
    the demo: IndexError in TPP's Gram term one iteration after such an
    event)."""
    hook = dict(method='acp_tp', target=0.6, begin=1, end=2, interval=1)
    cfg = pruning_cfg(mmdet_config, synth_data, tmp_path, max_epochs=3, **hook)
    cfg.train_cfg.val_interval = 100
    runner = Runner.from_cfg(cfg)
    ph = [h for h in runner.hooks
          if type(h).__name__ == 'ChannelPruningHook'][0]
    # event 2's goal = event 1's: already met
    ph.schedule = _Flat(ph.schedule.positions, ph.schedule.interval, 0.6,
                        ph.schedule.ramp, ph.schedule.soft)
    runner.train()
    assert ph.state['events_done'] == 2 and ph.state['pending'] is None
    tpp = [r for r in ph.regularizers if r.selective][0]
    assert not tpp.selection
    ratio = apis.cost_model(runner.model, (128, 128)).flops() / \
        ph.state['dense_cost']
    assert 0.5 <= ratio <= 0.6 + 1e-9
