"""Each method does in the real Runner what its preset says, and the tests
can tell a method from another (issue 14): the per-event FLOPs targets
follow the preset's ramp, every regulariser's term is logged and moves the
gradient of what it penalises, the preset's criterion decides the kept set,
the TPP penalty schedule survives --resume, the default schedule follows
the preset, data-driven scoring works after one short epoch, and LRP
relevance works on ReLU detectors and refuses others before training.
"""
import json
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from test_hook_training import KillAfterEpoch, _Stop, pruning_cfg
from test_stack_e2e import retinanet_voc_cfg

from mmprune import apis
from mmprune.allocators.schedule import PruningSchedule
from mmprune.criteria.scoring import batch_statistics
from mmprune.methods import get_method
from mmprune.runtime.rebind import unwrap


def pruning_hook(runner):
    return [
        h for h in runner.hooks if type(h).__name__ == 'ChannelPruningHook'
    ][0]


def flops_ratio(runner) -> float:
    return apis.cost_model(unwrap(runner.model), (128, 128)).flops() / \
        pruning_hook(runner).state['dense_cost']


def quiet(cfg):
    cfg.train_cfg.val_interval = 100  # no validation: keep the tests short
    return cfg


def method_cfg(fixtures, max_epochs, **hook):
    """``quiet(pruning_cfg(...))``: YOLOX-tiny on the synthetic set with a
    ChannelPruningHook of ``hook`` (``fixtures``: mmdet_config, synth_data
    and the work dir)."""
    return quiet(pruning_cfg(*fixtures, max_epochs=max_epochs, **hook))


class RecordAfterEpoch(Hook):
    """Records the FLOPs ratio after each epoch (after the pruning hook)."""
    priority = 'LOW'

    def __init__(self):
        self.ratios = []

    def after_train_epoch(self, runner):
        self.ratios.append(flops_ratio(runner))


# ------------------------------------------------------------------ ramp
def test_schedule_targets_and_preset_rescaling():
    cubic = PruningSchedule.from_range(1, 3, 1, target=0.5)
    assert cubic.targets() == pytest.approx(
        [1 - 0.5 * (1 - (2 / 3)**3), 1 - 0.5 * (1 - (1 / 3)**3), 0.5])
    linear = PruningSchedule.from_range(1, 3, 1, target=0.5, ramp='linear')
    assert linear.targets() == pytest.approx([1 - 0.5 / 3, 1 - 1 / 3, 0.5])
    acp = get_method('acp_tp').schedule
    full = PruningSchedule.from_preset(acp, 300, 'acp', target=0.5, soft=True)
    assert full.positions == tuple(range(30, 201, 10))  # the paper's 18
    assert full.cut_positions()[-1] == 210
    assert PruningSchedule.from_preset(
        acp, 3, 'acp', target=0.5, soft=True).positions == (1, 2)
    gcp = PruningSchedule.from_preset(
        get_method('gcp_frs').schedule, 30, 'gcp', target=0.5)
    # begin 30 -> 3, interval 15 -> 2 (rounded), last 195 -> 20 (rounded)
    assert gcp.positions == (3, 5, 7, 9, 11, 13, 15, 17, 19)
    with pytest.raises(ValueError, match='set begin=, end= and interval='):
        PruningSchedule.from_preset(
            get_method('bpc').schedule, 10, 'bpc', target=0.5)
    with pytest.raises(ValueError, match='set begin='):
        PruningSchedule.from_preset(
            get_method('acp_tp', family='rcnn_1x').schedule,
            12,
            'acp',
            target=0.5)


@pytest.mark.parametrize('method,ramp', [('acp_tp', 'cubic'),
                                         ('gcp_frs', 'linear')])
def test_per_event_flops_follow_the_preset_ramp(method, ramp, tmp_path,
                                                mmdet_config, synth_data):
    """Three events to 0.5: after each one the model keeps the ramp's
    value (written out here, not read from the hook), within the
    allocator's one-unit tolerance; the other ramp is far off."""
    soft = method == 'acp_tp'  # TPP: removal one epoch after selection
    cfg = method_cfg((mmdet_config, synth_data, tmp_path),
                     4,
                     method=method,
                     target=0.5,
                     begin=1,
                     end=3,
                     interval=1,
                     scoring_batches=1)
    runner = Runner.from_cfg(cfg)
    rec = RecordAfterEpoch()
    runner.register_hook(rec)
    runner.train()
    x = [1 / 3, 2 / 3, 1.0]
    want = {
        'cubic': [1 - 0.5 * (1 - (1 - k)**3) for k in x],
        'linear': [1 - 0.5 * k for k in x]
    }
    got = rec.ratios[1:] if soft else rec.ratios[:3]
    other = 'linear' if ramp == 'cubic' else 'cubic'
    for k, (g, w, o) in enumerate(zip(got, want[ramp], want[other])):
        assert w - 0.04 <= g <= w + 1e-9, (k + 1, got, want[ramp])
        if k < 2:
            assert abs(g - o) > 0.08, (k + 1, got, want[other])


# ---------------------------------------------------------- regularisers
class GradientProbe(Hook):
    """At the first iteration where every regulariser's term is non-zero,
    the gradient of a batch's loss with and without the terms (batch
    statistics, running stats untouched)."""
    priority = 'LOW'

    def __init__(self):
        self.result = None

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        model = unwrap(runner.model)
        ph = pruning_hook(runner)
        if self.result is not None or not all(
                float(r.loss(model)) > 0 for r in ph.regularizers):
            return
        data = model.data_preprocessor(data_batch, True)
        grads = []
        terms = model._mmprune_loss_terms
        for use in (terms, []):
            model._mmprune_loss_terms = use
            model.zero_grad(set_to_none=True)
            with batch_statistics(model):
                loss, _ = model.parse_losses(model(**data, mode='loss'))
                loss.backward()
            grads.append({
                n: p.grad.clone()
                for n, p in model.named_parameters() if p.grad is not None
            })
        model._mmprune_loss_terms = terms
        model.zero_grad(set_to_none=True)
        self.result = grads


@pytest.mark.parametrize('method', ['acp_tp', 'fcp'])
def test_regularizer_term_is_logged_and_moves_its_gradients(
        method, tmp_path, mmdet_config, synth_data):
    # batch 1: 8 iterations per epoch, so TPP's lambda (+delta every 10
    # steps, reaching 1 at the cut two epochs after the selection) rises
    cfg = method_cfg((mmdet_config, synth_data, tmp_path),
                     3,
                     method=method,
                     target=0.7,
                     begin=1,
                     end=1,
                     interval=2)
    cfg.train_dataloader.batch_size = 1
    # NOTE: lambda jumps 0 -> 0.625 -> 1 in this 16-iteration window, and
    # lw_opp=1000 then diverges at the config's lr 0.01: a small lr keeps
    # the run finite (the test is about the term, not about convergence)
    cfg.optim_wrapper.optimizer.lr = 1e-4
    runner = Runner.from_cfg(cfg)
    probe = GradientProbe()
    runner.register_hook(probe)
    ph = pruning_hook(runner)
    (reg, ) = ph.regularizers
    penalised = []  # modules whose parameters the term acts on
    if method == 'acp_tp':
        orig = reg.set_selection

        def spy(graph, selection, **kw):
            orig(graph, selection, **kw)
            penalised.extend(name for name, _ in reg._producers + reg._norms)

        reg.set_selection = spy
    runner.train()
    if method == 'fcp':
        penalised = [name for name, _ in reg._norms]
    rows = [
        json.loads(line)
        for line in open(osp.join(runner.log_dir, 'vis_data', 'scalars.json'))
    ]
    logged = [r['loss_prune_0'] for r in rows if 'loss_prune_0' in r]
    assert len(logged) == 24 and max(logged) > 0
    assert probe.result is not None, 'the term never became non-zero'
    with_term, without = probe.result
    assert penalised
    moved = [n for n in with_term if not torch.equal(with_term[n], without[n])]
    assert moved and all(
        any(n.startswith(m + '.') for m in penalised) for n in moved), moved
    assert any(n.startswith(penalised[0] + '.') for n in moved)


# ------------------------------------------------------------- criterion
@pytest.mark.parametrize('method', ['acp_tp', 'gcp_frs', 'fcp'])
def test_preset_criterion_decides_the_kept_set(method, tmp_path, mmdet_config,
                                               synth_data):
    """The same run with the criterion swapped for L1 keeps other
    channels: the preset's criterion is the one the events use."""
    plans = {}
    for crit in (None, 'L1Criterion'):
        hook = dict(
            method=method,
            target=0.7,
            begin=1,
            end=2,
            interval=1,
            soft=False,
            scoring_batches=1)
        if crit:
            hook['criterion'] = crit
        cfg = method_cfg((mmdet_config, synth_data, tmp_path / str(crit)), 2,
                         **hook)
        runner = Runner.from_cfg(cfg)
        runner.train()
        ph = pruning_hook(runner)
        want = crit or get_method(method).criterion['type']
        assert type(ph.criterion).__name__ == want
        plans[crit] = [p.keep for p in apis.model_plans(unwrap(runner.model))]
        assert len(plans[crit]) == 2
    for k in range(2):  # each event
        assert plans[None][k] != plans['L1Criterion'][k], k


# ---------------------------------------------------------------- resume
class LambdaTrace(Hook):
    priority = 'LOW'  # after the pruning hook has stepped the ramp

    def __init__(self):
        self.trace = {}

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        (tpp, ) = pruning_hook(runner).regularizers
        self.trace[runner.iter] = tpp.lambda_


def test_resumed_acp_tp_continues_the_same_lambda_trajectory(
        tmp_path, mmdet_config, synth_data):
    """Issue 14 item 4: the window's delta must come back on --resume."""

    def cfg_for(work):
        cfg = method_cfg((mmdet_config, synth_data, work),
                         3,
                         method='acp_tp',
                         target=0.7,
                         begin=1,
                         end=1,
                         interval=2)
        cfg.train_dataloader.batch_size = 1  # 8 iterations per epoch
        cfg.optim_wrapper.optimizer.lr = 1e-4  # see the test above
        return cfg

    full = Runner.from_cfg(cfg_for(tmp_path / 'full'))
    ref = LambdaTrace()
    full.register_hook(ref)
    full.train()
    # delta = lambda_max * K / window: +0.625 every K=10 steps of the
    # 16-step window (the preset's delta, 1e-4, would give 1e-4)
    assert max(ref.trace.values()) == pytest.approx(0.625)

    first = Runner.from_cfg(cfg_for(tmp_path / 'cut'))
    first.register_hook(KillAfterEpoch(2))
    with pytest.raises(_Stop):
        first.train()
    cfg = cfg_for(tmp_path / 'cut')
    cfg.resume = True
    cfg.load_from = str(tmp_path / 'cut' / 'epoch_2.pth')
    resumed = Runner.from_cfg(cfg)
    trace = LambdaTrace()
    resumed.register_hook(trace)
    resumed.train()
    assert sorted(trace.trace) == list(range(16, 24))
    assert [trace.trace[i] for i in range(16, 24)] == \
        [ref.trace[i] for i in range(16, 24)]


# ------------------------------------------------------ default schedule
def test_method_without_begin_uses_the_preset_schedule_rescaled(
        tmp_path, mmdet_config, synth_data):
    """ACP-TP's 18 events after epochs 30..200 of 300 become events after
    epochs 1 and 2 of a 3-epoch run (removal after 2 and 3), not a single
    event after epoch 1."""
    cfg = method_cfg((mmdet_config, synth_data, tmp_path),
                     3,
                     method='acp_tp',
                     target=0.6,
                     begin=None,
                     end=None,
                     interval=None)
    runner = Runner.from_cfg(cfg)
    ph = pruning_hook(runner)
    assert ph.schedule is None  # resolved against max_epochs
    runner.train()
    assert ph.schedule.positions == (1, 2) and ph.schedule.soft
    assert ph.state['events_done'] == 2 and ph.state['pending'] is None
    assert len(apis.model_plans(unwrap(runner.model))) == 2
    assert 0.5 <= flops_ratio(runner) <= 0.6 + 1e-9


def test_preset_without_an_epoch_schedule_asks_for_begin(
        tmp_path, mmdet_config, synth_data):
    cfg = method_cfg((mmdet_config, synth_data, tmp_path),
                     2,
                     method='bpc',
                     begin=None,
                     end=None,
                     interval=None)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r"method='bpc'.*set begin="):
        runner.train()
    assert runner.iter == 0


# ------------------------------------------------ scoring early in training
@pytest.mark.parametrize('method', ['gcp_frs', 'bpc'])
def test_data_driven_scoring_after_one_short_epoch(method, tmp_path,
                                                   mmdet_config, synth_data,
                                                   monkeypatch):
    """Issue 14 item 11: the first event after one epoch of two iterations,
    before BN's running statistics mean anything. The scoring pass uses
    batch statistics, and leaves the running ones untouched."""
    from mmprune.hooks.channel_pruning_hook import ChannelPruningHook
    cfg = method_cfg((mmdet_config, synth_data, tmp_path),
                     1,
                     method=method,
                     target=0.7,
                     begin=1,
                     end=1,
                     interval=1,
                     scoring_batches=2)
    # full learning rate from the first step (no warm-up): two steps move
    # the weights, and the running statistics (momentum 0.03) lag far
    # behind; an eval-mode scoring pass then overflows
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 0.04
    if method == 'bpc':  # the event searches the blend (a short search)
        cfg.custom_hooks[-1]['search'] = dict(max_evals=4)
    runner = Runner.from_cfg(cfg)
    changed, called = [], []

    def spy_on(name):
        orig = getattr(ChannelPruningHook, name)

        def spy(hook, runner, model, graph, *args):
            called.append(name)
            before = {k: v.clone() for k, v in model.state_dict().items()}
            scores = orig(hook, runner, model, graph, *args)
            changed.extend(k for k, v in model.state_dict().items()
                           if not torch.equal(v, before[k]))
            assert all(torch.isfinite(s).all() for s in scores.values())
            return scores

        monkeypatch.setattr(ChannelPruningHook, name, spy)

    spy_on('_scores')
    spy_on('_search')
    runner.train()
    assert called == ['_search' if method == 'bpc' else '_scores']
    assert len(apis.model_plans(unwrap(runner.model))) == 1
    assert 0.6 <= flops_ratio(runner) <= 0.7 + 1e-9
    assert changed == []  # no weight, running statistic or counter moved


# ------------------------------------------------------------------- LRP
def test_lrp_relevance_prunes_a_relu_retinanet_in_training(
        tmp_path, mmdet_config, voc_root):
    cfg = retinanet_voc_cfg(mmdet_config, voc_root, tmp_path, max_epochs=1)
    cfg.train_cfg.val_interval = 100
    cfg.custom_hooks = [
        dict(
            type='ChannelPruningHook',
            method='gcp_frs',
            target=0.9,
            begin=1,
            criterion=dict(type='FeatureRelevanceCriterion', relevance='lrp'),
            # the backbone, as the paper prunes ResNets (the shared head's
            # regression branch gets no classification relevance)
            exclude_groups=dict(
                exclude_coupled=True,
                exclude=(r'^neck', r'^bbox_head', r'\.downsample\.')),
            scoring_batches=1,
            input_size=(160, 160))
    ]
    runner = Runner.from_cfg(cfg)
    ph = pruning_hook(runner)
    calls = []
    orig = ph.criterion.accumulate_lrp_detection

    def spy(model, inputs, data_samples):
        orig(model, inputs, data_samples)
        calls.append(len(data_samples))

    ph.criterion.accumulate_lrp_detection = spy
    runner.train()
    assert len(calls) == 1 and calls[0] >= 1  # one scoring batch
    (plan, ) = apis.model_plans(unwrap(runner.model))
    assert plan.keep and all(n.startswith('backbone.') for n in plan.keep)
    ratio = apis.cost_model(unwrap(runner.model), (160, 160)).flops() / \
        ph.state['dense_cost']
    assert ratio <= 0.9 + 1e-9


def test_lrp_relevance_refuses_silu_yolox_before_training(
        tmp_path, mmdet_config, synth_data):
    cfg = method_cfg(
        (mmdet_config, synth_data, tmp_path),
        1,
        method='gcp_frs',
        begin=1,
        end=1,
        criterion=dict(type='FeatureRelevanceCriterion', relevance='lrp'))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(
            NotImplementedError,
            match=r"LRP relevance does not support module "
            r"'backbone\.stem.*\((Swish|SiLU)\)"):
        runner.train()
    assert runner.iter == 0


# ------------------------------------------------------------ BPC search
TINY_SEARCH = dict(
    pop_size=4,
    elite=1,
    generations=2,
    max_evals=6,
    calib_batches=1,
    bn_batches=1,
    fitness_images=4)


def test_bpc_searches_the_blend_in_training_and_resume_reuses_it(
        tmp_path, mmdet_config, synth_data, monkeypatch):
    """Issue 14 item 1: the first event searches the calibration factors
    (the kept set is not the uniform blend's on the same model state), the
    report and the blend go into the checkpointed state, and a resumed run
    rebuilds the blend from it for the next event without searching."""
    import mmprune.search as search_pkg
    from mmprune.registry import ALLOCATORS, build_from
    real = search_pkg.search_blend
    calls, uniform = [], []

    def cfg_for(work):
        return method_cfg((mmdet_config, synth_data, work),
                          2,
                          method='bpc',
                          target=0.7,
                          begin=1,
                          end=2,
                          interval=1,
                          search=TINY_SEARCH)

    first = Runner.from_cfg(cfg_for(tmp_path))
    ph = pruning_hook(first)
    assert ph.search['max_evals'] == 6 and ph.search['pop_size'] == 4

    def spy(model, graph, names, calib, heldout, *, cost, allocator, **kw):
        # what the fixed uniform blend (the preset's criterion) keeps on
        # this very model state
        scores = ph._scores(first, model, graph)
        keep = build_from(ALLOCATORS, allocator,
                          'allocator').allocate(model, graph, scores, cost)
        uniform.append(apis.make_plan(graph, keep).keep)
        calls.append(names)
        return real(
            model,
            graph,
            names,
            calib,
            heldout,
            cost=cost,
            allocator=allocator,
            **kw)

    monkeypatch.setattr(search_pkg, 'search_blend', spy)
    first.register_hook(KillAfterEpoch(1))
    with pytest.raises(_Stop):
        first.train()
    assert len(calls) == 1
    report, blend = ph.state['search'], ph.state['blend']
    assert report['evaluator_calls'] >= 1 and report['evaluations'] >= 1
    assert report['best_fitness'] >= report['uniform_fitness']
    assert type(ph.criterion).__name__ == 'BlendedCriterion'
    (plan, ) = apis.model_plans(unwrap(first.model))
    alphas = [a for stage in blend['alphas'].values() for a in stage.values()]
    assert plan.keep != uniform[0] or any(a != 1.0 for a in alphas)

    cfg = cfg_for(tmp_path)
    cfg.resume = True
    cfg.load_from = str(tmp_path / 'epoch_1.pth')
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    rh = pruning_hook(resumed)
    assert len(calls) == 1  # no second search
    assert rh.state['blend'] == blend and rh.state['search'] == report
    assert rh.criterion.alphas == ph.criterion.alphas
    assert rh.state['events_done'] == 2
    assert len(apis.model_plans(unwrap(resumed.model))) == 2
