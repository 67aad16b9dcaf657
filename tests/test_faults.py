"""Faults and bad input (issue #8): every failure names its cause (the
argument, module or file), stops before training when it can, and leaves no
file half-written and no checkpoint lost.

Cases already covered elsewhere (not repeated here):

* allocator argument ranges by name:
  ``test_allocators.py::test_arguments_are_validated_by_name``;
* NaN/Inf *scores* in every allocator (raise naming the group, or skip):
  ``test_allocators.py::test_nan_scores_raise_or_skip_clearly``;
* unknown method preset names: ``test_allocators.py::
  test_method_lookup_errors_and_families``;
* ``tools/prune.py`` bad arguments: ``test_prune_cli.py::
  test_prune_cli_bad_arguments``;
* ``weights_only`` enforcement (a pickled foreign object fails, the
  ``getattr`` stand-in is restricted): ``test_stack_e2e.py::
  test_weights_only_is_still_enforced`` and ``test_getattr_is_restricted``;
* the Taylor loss-scale arithmetic (and skipped overflow steps):
  ``test_criteria.py::test_taylor_is_invariant_to_the_amp_loss_scale``;
* a schedule reaching YOLOX's no-augmentation epochs: ``test_yolox_recipe.py::
  test_schedule_into_no_augmentation_epochs_is_refused``;
* frozen stages pinned and logged by the analysis: ``test_graph_mmdet.py::
  test_frozen_stages_are_pinned_and_logged``;
* a kill *between* events, then resume: ``test_hook_training.py::
  test_resume_after_cut_matches_uninterrupted``.
"""
import contextlib
import copy
import hashlib
import json
import os
import os.path as osp
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, DefaultScope
from mmengine.runner import Runner, load_checkpoint
from test_graph_toy import ToyDetector, conv_bn, randomise_bn
from test_hook_training import pruning_cfg, shapes
from test_stack_e2e import yolox_coco_cfg

from mmprune import apis
from mmprune.allocators import BudgetAllocator, UniformAllocator
from mmprune.criteria import L1Criterion
from mmprune.hooks.channel_pruning_hook import ChannelPruningHook
from mmprune.runtime.atomic_checkpoint import AtomicLocalBackend
from mmprune.structures import StructureError, read_meta

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
YOLOX_S = 'yolox/yolox_s_8xb8-300e_coco.py'


class Crash(Exception):
    """Stands for a process killed at this point: nothing after it runs."""


# --------------------------------------------------------------- helpers
def run_cfg(mmdet_config, synth, work, max_epochs=1, **hook):
    """YOLOX-tiny on the synthetic set with the hook; one event unless
    ``end`` says otherwise; no validation (not what these tests are
    about)."""
    hook.setdefault('end', hook.get('begin', 1))
    cfg = pruning_cfg(mmdet_config, synth, work, max_epochs=max_epochs, **hook)
    cfg.train_cfg.val_interval = 1000
    return plain_text(cfg)


def plain_text(cfg):
    """mmengine's own ``format_python_code=False``: the Runner logs, dumps
    and sends its config text without running yapf over it, which is most
    of a short Runner's time here (several seconds per run)."""
    object.__setattr__(cfg, '_format_python_code', False)
    return cfg


def hook_of(runner) -> ChannelPruningHook:
    return next(h for h in runner.hooks if isinstance(h, ChannelPruningHook))


def sha(path) -> str:
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def leftovers(folder):
    """Checkpoints and temporary files in ``folder``."""
    return sorted(
        f for f in os.listdir(folder)
        if f.endswith('.pth') or f.startswith('.tmp'))


@contextlib.contextmanager
def file_size_limit(nbytes):
    """A real partial write: every write past ``nbytes`` fails with EFBIG
    (like a full disk it stops a write midway; it works as root, where a
    read-only chmod does not)."""
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        yield lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                         (nbytes, old[1]))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_sig)


class ScoreLog:
    """Records the scores each event computed (observation only)."""

    def __init__(self, monkeypatch):
        self.scores = []
        orig = ChannelPruningHook._scores

        def spy(hook, runner, model, graph):
            out = orig(hook, runner, model, graph)
            self.scores.append({
                k: v.detach().double().clone()
                for k, v in out.items()
            })
            return out

        monkeypatch.setattr(ChannelPruningHook, '_scores', spy)


# ---------------------------------------------------- settings by name
@pytest.mark.parametrize('kwargs, needle', [
    (dict(target=0), r'target must be in \(0, 1\], got 0'),
    (dict(target=1.5), r'target must be in \(0, 1\], got 1.5'),
    (dict(target=-0.2), 'target must be'),
    (dict(target='half'), 'target must be'),
    (dict(interval=0), 'interval must be >= 1, got 0'),
    (dict(interval=-2), 'interval must be a non-negative int, got -2'),
    (dict(begin=-1), 'begin must be a non-negative int, got -1'),
    (dict(begin=3, end=2), r'end \(2\) is before begin \(3\)'),
    (dict(budget='macs'), "budget must be one of .*, got 'macs'"),
    (dict(ramp='exp'), "ramp must be one of .*, got 'exp'"),
    (dict(scoring_batches=0), 'scoring_batches must be an int >= 1'),
    (dict(min_keep=0), 'min_keep must be an int >= 1, got 0'),
    (dict(max_prune_ratio=1.0), r'max_prune_ratio must be in \[0, 1\)'),
    (dict(round_to=0), 'round_to must be an int >= 1, got 0'),
    (dict(residual_mode='half'),
     r"residual_mode must be one of \('coupled', 'fine'\), got 'half'"),
    (dict(criterion='NopeCriterion'),
     r"unknown criterion 'NopeCriterion'; valid names: \[.*'L1Criterion'"),
    (dict(allocator=dict(type='NopeAllocator')),
     r"unknown allocator 'NopeAllocator'; valid names: \[.*'Budget"),
    (dict(regularizers=[dict(type='Nope')]),
     r"unknown regularizer 'Nope'; valid names: \[.*'TPP"),
    (dict(method='slimming'),
     r"unknown pruning method 'slimming'; valid names: \['acp_tp'"),
])
def test_hook_settings_are_validated_by_name(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ChannelPruningHook(**kwargs)


def test_min_keep_larger_than_a_group_keeps_it_whole():
    """Groups narrower than ``min_keep`` stay whole (never emptied, never
    grown); a ``min_keep`` that leaves the target unreachable is an error
    naming it."""
    torch.manual_seed(0)
    model = randomise_bn(ToyDetector()).eval()
    graph = apis.analyze(model, input_size=(32, 32))
    cost = apis.cost_model(model, (32, 32))
    scores = L1Criterion().score(model, graph)
    widths = {g.name: g.width for g in graph.prunable_groups()}
    assert min(widths.values()) <= 20 < max(widths.values())
    for alloc in (BudgetAllocator, UniformAllocator):
        keep = alloc(0.9, min_keep=20).allocate(model, graph, scores, cost)
        for name, w in widths.items():
            if w <= 20:
                assert len(keep[name]) == w, name
            else:
                assert 20 <= len(keep[name]) <= w, name
        assert cost.flops(graph, keep) <= 0.9 * cost.flops()
    with pytest.raises(ValueError, match='min_keep=64'):
        BudgetAllocator(0.3, min_keep=64).allocate(model, graph, scores, cost)


# --------------------------------------------- refused before training
@pytest.mark.parametrize(
    'hook, max_epochs, needle',
    [
        (dict(begin=1, end=2), 1,
         r'schedule ends at epoch 2, after training ends \(1 epochs\)'),
        (
            dict(begin=1, end=1, soft=True),
            1,  # the soft cut lands at epoch 2
            r'schedule ends at epoch 2, after training ends'),
        (dict(ignored_layers=('backbone.stem.conv', 'neck.nope')), 1,
         r"ignored_layers names modules that do not exist: \['neck.nope'\]"),
        (dict(min_keep=1000), 1,
         r'target=0.5 \(flops\) cannot be reached: with min_keep=1000'),
        # frozen stem/stage1 (below) and every other group excluded: nothing
        # may be pruned, which is said before training, never "solved" by
        # pruning the frozen modules
        (dict(
            exclude_groups=dict(exclude=(r'^(?!backbone\.(stem|stage1))', ))),
         1, r'smallest model keeps 1.000 of the dense flops \(0 group\(s\) '
         r'may be pruned; frozen modules'),
        (dict(trace_size=(100, 100)), 1,
         r"op 'cat' in module 'neck' raised RuntimeError: Sizes of tensors "
         r'must match.*\(traced on a \(100, 100\) dummy image'),
    ],
    ids=[
        'end_after_training', 'soft_cut_after_training', 'ignored_layers',
        'unreachable_target', 'only_frozen_left', 'untraceable_op'
    ])
def test_refused_before_the_first_iteration(hook, max_epochs, needle, tmp_path,
                                            mmdet_config, synth_data):
    cfg = run_cfg(mmdet_config, synth_data, tmp_path, max_epochs, **hook)
    cfg.model.backbone.frozen_stages = 1
    runner = Runner.from_cfg(cfg)
    with pytest.raises((ValueError, RuntimeError), match=needle):
        runner.train()
    assert runner.iter == 0  # not one training step
    assert leftovers(tmp_path) == [] and not apis.model_plans(runner.model)


def test_ops_the_graph_cannot_prune_are_pinned_and_named(caplog):
    """What the analysis cannot prune it pins and names (module and op),
    and the compact model still equals the masked one. Found here: a
    Linear on (N, L, C) tokens at two lengths made the tracer raise; a
    conv weight read by ``F.conv2d`` outside its module, and ``.numpy()``
    on a feature map, left those channels prunable (wrong output or a
    crash after surgery)."""

    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a, self.b = conv_bn(3, 8), conv_bn(8, 8)
            self.c, self.e = conv_bn(8, 8), conv_bn(8, 8)
            self.d = conv_bn(8, 4)
            self.tok = nn.Linear(8, 8)

        def forward(self, x):
            y = self.b(self.a(x))
            # (N, HW, C) tokens at two lengths through one shared Linear
            t = [
                self.tok(z.flatten(2).transpose(1, 2)).mean()
                for z in (y, F.max_pool2d(y, 2))
            ]
            # c's weight also used outside c, only through a scalar
            z = self.c(y) * F.conv2d(y, self.c[0].weight).mean()
            u = self.e(z) * t[0] * t[1]
            return self.d(u * float(u.detach().numpy().mean()))

    torch.manual_seed(0)
    model = randomise_bn(Net()).eval()
    with caplog.at_level('INFO', logger='mmprune'):
        graph = apis.analyze(model, input_size=(8, 8))
    prunable = {g.name: g.prunable for g in graph.groups}
    assert prunable == {'a.0': 8, 'b.0': 0, 'c.0': 0, 'e.0': 0, 'd.0': 0}
    log = caplog.text
    assert 'tok: Linear: channels pinned (applied to a 3-D input)' in log
    assert "c.0: parameter of c.0 read by op 'conv2d' in <root>" in log
    assert "op 'numpy' in <root>" in log and "op 'transpose' in <root>" in log

    from mmprune.pruners.masking import build_mask
    keep = {g.name: np.arange(0, g.width, 2) for g in graph.prunable_groups()}
    masked = randomise_bn(Net()).eval()
    masked.load_state_dict(model.state_dict())
    build_mask(masked, graph, keep).apply(masked)
    apis.prune(model, apis.make_plan(graph, keep), graph)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a, b = masked(x), model(x)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


# -------------------------------------------------------------- frozen
def test_frozen_stages_are_never_pruned(tmp_path, mmdet_config, synth_data,
                                        caplog):
    cfg = run_cfg(mmdet_config, synth_data, tmp_path)
    cfg.model.backbone.frozen_stages = 1  # stem and stage1 frozen

    class Shapes(Hook):

        def before_train(self, runner):
            self.dense = shapes(runner.model)

    probe = Shapes()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe)
    with caplog.at_level('INFO', logger='mmprune'):
        runner.train()
    assert len(apis.model_plans(runner.model)) == 1
    now = shapes(runner.model)
    frozen = [
        n for n, p in runner.model.named_parameters() if not p.requires_grad
    ]
    assert frozen and all(
        n.startswith(('backbone.stem', 'backbone.stage1')) for n in frozen)
    for n in frozen:
        assert now[n] == probe.dense[n], n
    # their outputs keep their width for the consumers too
    first = 'backbone.stage2.0.conv.weight'
    assert now[first][1] == probe.dense[first][1]
    assert sum(np.prod(s) for s in now.values()) < \
        sum(np.prod(s) for s in probe.dense.values())
    assert 'frozen modules are not pruned' in caplog.text and \
        'backbone.stem.conv.conv' in caplog.text


# --------------------------------------------------------- NaN / Inf
class Poison(Hook):
    """Writes NaN/Inf into one conv's weight right before the event (after
    the last iteration of epoch 1; ChannelPruningHook runs at 40)."""
    priority = 30

    def __init__(self, value):
        self.value = value
        self.group = None

    def after_train_epoch(self, runner):
        model = runner.model
        graph = apis.analyze(model)
        g = next(g for g in graph.prunable_groups()
                 if len(g.producers()) == 1 and g.width >= 16)
        self.group = g.name
        conv = dict(model.named_modules())[g.producers()[0].module]
        with torch.no_grad():
            conv.weight[0].fill_(self.value)


def test_non_finite_weights_stop_the_event_or_skip_the_group(
        tmp_path, mmdet_config, synth_data, caplog):
    # default: the run stops at the event, naming the group; no checkpoint
    # of that epoch is written and nothing is cut
    cfg = run_cfg(mmdet_config, synth_data, tmp_path / 'raise')
    runner = Runner.from_cfg(cfg)
    poison = Poison(float('nan'))
    runner.register_hook(poison)
    with pytest.raises(
            ValueError,
            match=r'non-finite scores \(NaN/Inf\) in '
            r"group '(.+)'; set nan_policy='skip'") as e:
        runner.train()
    assert poison.group in str(e.value)
    assert leftovers(tmp_path / 'raise') == []
    assert not apis.model_plans(runner.model)

    # nan_policy='skip': the group is kept whole with a warning, the others
    # are cut as usual and no group is emptied
    cfg = run_cfg(
        mmdet_config,
        synth_data,
        tmp_path / 'skip',
        allocator=dict(type='BudgetAllocator', nan_policy='skip'))
    runner = Runner.from_cfg(cfg)
    poison = Poison(float('inf'))
    runner.register_hook(poison)
    with caplog.at_level('WARNING', logger='mmprune'):
        runner.train()
    assert f'group {poison.group} has non-finite scores; it is kept whole' \
        in caplog.text
    plans = apis.model_plans(runner.model)
    assert len(plans) == 1 and poison.group not in plans[0].keep
    assert all(m.out_channels >= 1 for m in runner.model.modules()
               if isinstance(m, nn.Conv2d))
    ratio = apis.cost_model(runner.model, (128, 128)).flops() / \
        hook_of(runner).state['dense_cost']
    assert ratio <= 0.5


# ---------------------------------------- checkpoints of another model
@pytest.fixture(scope='module')
def pruned_tiny(tmp_path_factory, mmdet_config, synth_data):
    """A pruned YOLOX-tiny checkpoint (as tools/prune.py writes it), and
    config files for YOLOX-tiny and YOLOX-s on the synthetic classes."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    work = tmp_path_factory.mktemp('pruned_tiny')
    tiny = plain_text(yolox_coco_cfg(mmdet_config, synth_data, work / 'w'))
    small = plain_text(
        yolox_coco_cfg(lambda _: mmdet_config(YOLOX_S), synth_data,
                       work / 'w'))
    files = dict(
        tiny=str(work / 'tiny.py'),
        s=str(work / 's.py'),
        ckpt=str(work / 'pruned.pth'))
    tiny.dump(files['tiny'])
    small.dump(files['s'])
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(tiny.model)
    graph = apis.analyze(model)
    keep = BudgetAllocator(
        0.6, min_keep=4).allocate(model, graph,
                                  L1Criterion().score(model, graph),
                                  apis.cost_model(model, (128, 128)))
    apis.prune(model, apis.make_plan(graph, keep), graph)
    meta = apis.make_meta(apis.model_plans(model), apis.TRACE_SIZE)
    torch.save(
        dict(state_dict=model.state_dict(), meta={'mmprune': meta}),
        files['ckpt'])
    files.update(
        cfg_tiny=tiny, cfg_s=small, meta=meta, state_dict=model.state_dict())
    return files


def test_checkpoint_of_another_model_is_reported_clearly(
        pruned_tiny, mmdet_config, synth_data, tmp_path):
    """A pruned YOLOX-tiny checkpoint loaded into YOLOX-s: every path says
    which file, that its structure does not fit, and which group differs;
    no 'size mismatch' list from deep inside load_state_dict."""
    ckpt = pruned_tiny['ckpt']
    widths = r"group '[\w.]+' has width \d+, the plan expects \d+"
    with pytest.raises(StructureError) as e:
        apis.init_pruned_detector(pruned_tiny['s'], ckpt)
    msg = str(e.value)
    assert msg.startswith(f'{ckpt}: its pruned structure cannot be rebuilt '
                          f"on the YOLOX of {pruned_tiny['s']}")
    assert re.search(widths, msg) and 'size mismatch' not in msg

    # the state dict alone (mmdet's DetInferencer) through PrunableDetector
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(
            dict(
                type='PrunableDetector',
                architecture=pruned_tiny['cfg_s'].model))
    with pytest.raises(
            StructureError,
            match="'mmprune_structure' buffer .* "
            'the PrunableYOLOX built from the config cannot '
            'take'):
        load_checkpoint(model, ckpt, map_location='cpu', strict=True)

    # the Runner's load_from (tools/test.py), with the hook in the config
    cfg = copy.deepcopy(pruned_tiny['cfg_s'])
    cfg.work_dir = str(tmp_path)
    cfg.custom_hooks = list(cfg.custom_hooks) + [
        dict(type='ChannelPruningHook', input_size=(128, 128))
    ]
    cfg.load_from = ckpt
    runner = Runner.from_cfg(cfg)
    with pytest.raises(StructureError) as e:
        runner.test()
    assert str(e.value).startswith(f'{ckpt}: its pruned structure does not '
                                   'fit the PrunableYOLOX built from the '
                                   'config')
    assert re.search(widths, str(e.value))


# ------------------------------------------- tampered structure record
TAMPERED = [
    (lambda m: m.update(version=7), 'unsupported mmprune structure version 7'),
    (lambda m: m.update(trace_size=[0, 128]), r'bad trace_size \[0, 128\]'),
    (lambda m: m.update(plans={}), '"plans" must be a list'),
    (lambda m: m['plans'][0]['keep'].update(x=[-1]), 'non-negative ints'),
    (lambda m: m['plans'][0]['keep'].update(
        {next(iter(m['plans'][0]['keep'])): []}),
     "keeps no channel of group '[\\w.]+'"),
    (lambda m: m['plans'][0]['keep'].update(
        {next(iter(m['plans'][0]['keep'])): [0, 0, 1]}),
     'lists a channel of group .* more than once'),
    (lambda m: m['plans'][0].update(widths={'a': -3}), '"widths" must map'),
    (lambda m: m['plans'][0].update(residual_mode='half'),
     "residual_mode must be coupled or fine, got 'half'"),
    (lambda m: m.update(state=[1]), '"state" must be a dict'),
]


@pytest.mark.parametrize(
    'edit, needle',
    TAMPERED,
    ids=[
        'version', 'trace_size', 'plans', 'negative_index', 'empty_group',
        'repeated_index', 'widths', 'residual_mode', 'state'
    ])
def test_tampered_structure_record_is_refused(pruned_tiny, edit, needle):
    meta = json.loads(json.dumps(pruned_tiny['meta']))
    edit(meta)
    with pytest.raises(StructureError, match=needle):
        read_meta(meta)


def test_tampered_checkpoints_fail_naming_file_and_field(
        pruned_tiny, tmp_path, mmdet_config, synth_data):
    ckpt = torch.load(
        pruned_tiny['ckpt'], map_location='cpu', weights_only=True)

    # a plan index beyond the group: init_pruned_detector names the file
    bad = json.loads(json.dumps(ckpt['meta']['mmprune']))
    name = next(iter(bad['plans'][0]['keep']))
    bad['plans'][0]['keep'][name] = [0, 10_000]
    path = str(tmp_path / 'bad_plan.pth')
    torch.save(dict(ckpt, meta={'mmprune': bad}), path)
    with pytest.raises(
            StructureError,
            match='(?s)' + re.escape(path) + '.*' +
            re.escape(f"group '{name}': index 10000 out "
                      'of range')):
        apis.init_pruned_detector(pruned_tiny['tiny'], path)

    # the structure buffer in the state dict: bytes that are not JSON
    sd = dict(ckpt['state_dict'])
    sd['mmprune_structure'] = torch.tensor(
        list(b'\xff{not json'), dtype=torch.uint8)
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(
            dict(
                type='PrunableDetector',
                architecture=pruned_tiny['cfg_tiny'].model))
    with pytest.raises(
            StructureError,
            match='mmprune_structure buffer is not valid JSON'):
        model.load_state_dict(sd)

    # a foreign pickled object is never unpickled (weights_only=True):
    # torch refuses the global before any of its code can run
    class Payload:

        def __reduce__(self):
            return (print, ('this must never run', ))

    path = str(tmp_path / 'pickled.pth')
    torch.save(dict(ckpt, meta={'mmprune': Payload()}), path)
    with pytest.raises(Exception, match='Weights only load failed'):
        apis.init_pruned_detector(pruned_tiny['tiny'], path)

    # the hook's training state: a wrong type is refused when the
    # checkpoint is loaded (Runner load_from), naming file and field,
    # not as a TypeError in the middle of training
    meta = json.loads(json.dumps(ckpt['meta']['mmprune']))
    meta['state'] = dict(events_done='2', dense_cost=1e9, pending=None)
    path = str(tmp_path / 'bad_state.pth')
    torch.save(dict(ckpt, meta={'mmprune': meta}), path)
    cfg = run_cfg(mmdet_config, synth_data, tmp_path / 'w')
    cfg.load_from = path
    runner = Runner.from_cfg(cfg)
    with pytest.raises(
            StructureError,
            match=re.escape(path) +
            r": mmprune training state: 'events_done' must be an "
            r"int >= 0, got '2'"):
        runner.train()
    assert runner.iter == 0


# ------------------------------------------------ full disk, bad dirs
def test_atomic_backend_never_replaces_a_good_checkpoint(tmp_path):
    """mmengine's LocalBackend truncates the target first; ours writes a
    temporary file and renames it, so a write that fails midway leaves the
    old file byte for byte and no temporary file."""
    from mmengine.fileio import LocalBackend
    good = os.urandom(1 << 16)
    data = os.urandom(3 << 20)
    for backend, survives in ((AtomicLocalBackend(), True), (LocalBackend(),
                                                             False)):
        path = tmp_path / f'{type(backend).__name__}.pth'
        path.write_bytes(good)
        with file_size_limit(1 << 20) as limit:
            limit()
            with pytest.raises(OSError) as e:
                backend.put(data, str(path))
        assert (path.read_bytes() == good) == survives
        if survives:
            assert e.value.errno == 27 and str(path) in str(e.value)
    assert sorted(os.listdir(tmp_path)) == [
        'AtomicLocalBackend.pth', 'LocalBackend.pth'
    ]


def test_prune_tool_on_a_full_disk_or_an_unwritable_work_dir(tmp_path):
    """tools/prune.py: a write that fails midway (file size limit, like a
    full disk) names the file and leaves neither a partial file nor a
    temporary one, and an older result stays intact; a work dir that
    cannot be created names the path."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'prune_cli', osp.join(ROOT, 'tools', 'prune.py'))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = [
        'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', '--flops-ratio', '0.5',
        '--input-size', '128', '128', '--work-dir'
    ]
    work = tmp_path / 'full'
    work.mkdir()
    (work / 'pruned.pth').write_bytes(b'an older, good result')
    with file_size_limit(1 << 20) as limit:
        limit()
        with pytest.raises((OSError, RuntimeError),
                           match=re.escape(f"cannot write '{work}"
                                           f"/pruned.pth'")):
            cli.main(args + [str(work)])
    assert os.listdir(work) == ['pruned.pth']
    assert (work / 'pruned.pth').read_bytes() == b'an older, good result'

    # unwritable: a read-only folder when not root (root ignores chmod),
    # else a work dir below a regular file
    blocker = tmp_path / 'blocker'
    if os.geteuid() != 0:
        blocker.mkdir(mode=0o500)
        target = blocker / 'out'
    else:
        blocker.write_text('a file, not a folder')
        target = blocker / 'out'
    with pytest.raises(OSError, match=re.escape(str(target))):
        cli.main(args + [str(target)])
    assert not osp.exists(target)


# ---------------------------------- a crash inside an event, then resume
@pytest.fixture(scope='module')
def reference(tmp_path_factory, mmdet_config, synth_data):
    """An uninterrupted run: events after epochs 1 and 2."""
    work = tmp_path_factory.mktemp('reference')
    cfg = run_cfg(mmdet_config, synth_data, work, max_epochs=2, begin=1, end=2)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return dict(
        work=work,
        shapes=shapes(runner.model),
        plans=[p.to_dict() for p in apis.model_plans(runner.model)])


class FullDiskAtSave(Hook):
    """The checkpoint write after epoch 2 (right after its event) fails
    midway."""
    priority = 'LOWEST'

    def __init__(self, limit):
        self.limit = limit

    def before_save_checkpoint(self, runner, checkpoint):
        if runner.epoch + 1 == 2:
            self.limit()


def test_crashes_inside_an_event_then_resume(reference, tmp_path, mmdet_config,
                                             synth_data, monkeypatch):
    """Epoch 2's event is interrupted three times in a row, each run
    resuming from what the previous one left: after scoring, halfway
    through the surgery (model cut, optimizer and EMA not), and while its
    checkpoint is written (the write fails midway). Each time the work dir
    holds only complete checkpoints (``epoch_2.pth`` from an earlier run
    stays byte-identical, ``last_checkpoint`` names ``epoch_1.pth``); the
    fourth run reaches the structure of the uninterrupted one."""
    from mmprune.pruners import apply_compact
    from mmprune.runtime.rebind import unwrap
    ref = reference['work']
    for name in ('epoch_1.pth', 'epoch_2.pth'):
        shutil.copy(ref / name, tmp_path / name)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    good = sha(tmp_path / 'epoch_2.pth')

    def scores_then_crash(hook, *args):
        ChannelPruningHook._scores.__wrapped__(hook, *args)
        raise Crash

    scores_then_crash.__wrapped__ = ChannelPruningHook._scores

    def half_a_cut(runner, graph, keep):
        apply_compact(unwrap(runner.model), graph, keep)
        raise Crash

    def resumed_runner():
        cfg = run_cfg(
            mmdet_config, synth_data, tmp_path, max_epochs=2, begin=1, end=2)
        cfg.resume = True
        return Runner.from_cfg(cfg)

    for point in ('scoring', 'surgery', 'checkpoint'):
        runner = resumed_runner()
        with monkeypatch.context() as mp, file_size_limit(1 << 20) as limit:
            if point == 'scoring':
                mp.setattr(ChannelPruningHook, '_scores', scores_then_crash)
            elif point == 'surgery':
                mp.setattr('mmprune.hooks.channel_pruning_hook.prune_runner',
                           half_a_cut)
            else:
                runner.register_hook(FullDiskAtSave(limit))
            with pytest.raises(OSError if point == 'checkpoint' else Crash) \
                    as e:
                runner.train()
        if point == 'checkpoint':
            assert f"cannot write '{tmp_path / 'epoch_2.pth'}'" in \
                str(e.value)
        assert leftovers(tmp_path) == ['epoch_1.pth', 'epoch_2.pth'], point
        assert sha(tmp_path / 'epoch_2.pth') == good, point
        assert (tmp_path / 'last_checkpoint').read_text() == \
            str(tmp_path / 'epoch_1.pth')

    resumed = resumed_runner()
    resumed.train()
    assert resumed.epoch == 2
    assert [p.to_dict() for p in apis.model_plans(resumed.model)] == \
        reference['plans']
    assert shapes(resumed.model) == reference['shapes']
    assert sha(tmp_path / 'epoch_2.pth') != good  # rewritten, completely
    torch.load(tmp_path / 'epoch_2.pth', map_location='cpu', weights_only=True)


# ------------------------------------------------------ DDP disagreement
PROBE = '''
"""Test-only hooks (tests/test_faults.py), both run after epoch 1 before
ChannelPruningHook (priority 40) runs its event."""
import torch
import mmengine.config.config
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmdet.registry import HOOKS

from mmprune import apis
from mmprune.runtime.rebind import unwrap

# speed only: the Runner logs and dumps its config text several times and
# yapf-formatting it takes seconds; the text is never read here
mmengine.config.config.FormatCode = lambda text, **kwargs: (text, None)


@HOOKS.register_module()
class DivergeOnRankOneHook(Hook):
    priority = 30

    def after_train_epoch(self, runner):
        if get_rank() == 1:
            model = unwrap(runner.model)
            graph = apis.analyze(model)
            g = graph.prunable_groups()[0]
            keep = {g.name: [i for i in range(g.width)
                             if i % 2 == 0 or g.pinned[i]]}
            apis.prune(model, apis.make_plan(graph, keep), graph)


@HOOKS.register_module()
class NaNWeightHook(Hook):
    """Every rank: NaN in one conv; rank 0's allocator refuses the scores."""
    priority = 30

    def after_train_epoch(self, runner):
        model = unwrap(runner.model)
        g = apis.analyze(model).prunable_groups()[0]
        conv = dict(model.named_modules())[g.producers()[0].module]
        with torch.no_grad():
            conv.weight[0].fill_(float('nan'))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


DISAGREE = (r'mmprune: ranks disagree on the model structure before the '
            r'prune step at epoch 1 \(rank 0: [0-9a-f]{16}, rank 1: '
            r'[0-9a-f]{16}\)')
NAN = r"non-finite scores \(NaN/Inf\) in group '[\w.]+'"


@pytest.mark.parametrize(
    'probe, errors', [
        ('DivergeOnRankOneHook', (DISAGREE, DISAGREE)),
        ('NaNWeightHook',
         (r'ValueError: ' + NAN,
          r'ValueError: mmprune: prune event 1 failed on rank '
          r'0: ' + NAN)),
    ],
    ids=['structure_differs', 'rank0_allocation_fails'])
def test_ddp_ranks_fail_together(probe, errors, tmp_path, mmdet_config,
                                 synth_data):
    """Two gloo ranks through tools/train.py. ``DivergeOnRankOneHook``:
    rank 1's model differs before the event; a structure hash compared in
    one all-gather makes both ranks raise the same clear error. (Before,
    rank 1 failed alone on rank 0's plan and rank 0 sat in the next
    collective until rank 1's process was gone: a gloo "connection closed
    by peer", or a hang while it lives on.) ``NaNWeightHook``: rank 0's
    allocator refuses NaN scores; rank 1, waiting for the plan, is told
    why instead of waiting in the broadcast."""
    (tmp_path / 'fault_probe.py').write_text(PROBE)
    cfg = run_cfg(mmdet_config, synth_data, tmp_path / 'work', max_epochs=2)
    cfg.custom_imports = dict(
        imports=['mmprune', 'fault_probe'], allow_failed_imports=False)
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type=probe)]
    cfg.train_dataloader.batch_size = 2
    cfg.default_hooks.checkpoint.interval = 100
    path = str(tmp_path / 'cfg.py')
    cfg.dump(path)
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            MASTER_ADDR='127.0.0.1',
            MASTER_PORT=str(port),
            WORLD_SIZE='2',
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            OMP_NUM_THREADS='1',
            CUDA_VISIBLE_DEVICES='',
            PYTHONPATH=f'{ROOT}:{tmp_path}')
        procs.append(
            subprocess.Popen([
                sys.executable,
                osp.join(ROOT, 'tools', 'train.py'), path, '--launcher',
                'pytorch', '--work-dir',
                str(tmp_path / 'work')
            ],
                             cwd=ROOT,
                             env=env,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT,
                             text=True))
    t0 = time.time()
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert time.time() - t0 < 300
    for rank, (p, out, error) in enumerate(zip(procs, outs, errors)):
        assert p.returncode != 0, out[-3000:]
        assert re.search(error, out), (rank, out[-3000:])


# --------------------------------------------- empty images in scoring
def test_scoring_subset_of_unannotated_and_blank_images(
        tmp_path, mmdet_config, synth_data, monkeypatch):
    """GCP-FRS-style relevance scoring on a scoring batch whose images have
    no annotations, two of them blank: the event scores finite, non-zero
    relevance, reaches the target and empties no module."""
    import cv2
    root = tmp_path / 'coco'
    shutil.copytree(synth_data['coco_root'], root)
    ann_file = root / 'annotations' / 'instances_train2017.json'
    ann = json.load(open(ann_file))
    first = sorted(ann['images'], key=lambda i: i['id'])[:4]  # batch 1
    ids = {i['id'] for i in first}
    ann['annotations'] = [
        a for a in ann['annotations'] if a['image_id'] not in ids
    ]
    json.dump(ann, open(ann_file, 'w'))
    for img in first[:2]:
        cv2.imwrite(
            str(root / 'train2017' / img['file_name']),
            np.full((img['height'], img['width'], 3), 114, np.uint8))
    synth = dict(synth_data, coco_root=str(root))
    cfg = run_cfg(
        mmdet_config,
        synth,
        tmp_path / 'work',
        criterion='FeatureRelevanceCriterion',
        scoring_batches=1)
    log = ScoreLog(monkeypatch)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert len(log.scores) == 1
    for name, s in log.scores[0].items():
        assert torch.isfinite(s).all(), name
    assert sum(float(s.abs().sum()) for s in log.scores[0].values()) > 0
    assert len(apis.model_plans(runner.model)) == 1
    assert apis.cost_model(runner.model, (128, 128)).flops() <= \
        0.5 * hook_of(runner).state['dense_cost']
    assert all(m.out_channels >= 1 for m in runner.model.modules()
               if isinstance(m, nn.Conv2d))


# ---------------------------------------------------- AMP with Taylor
@OPTIM_WRAPPERS.register_module(force=True)
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's AmpOptimWrapper on CPU, for this test only. Its
    constructor refuses a machine without an accelerator and builds
    ``torch.cuda.amp.GradScaler``; everything the run uses afterwards
    (scaled backward, ``step`` through the scaler, the bf16 autocast
    context) is mmengine's own code, with a real CPU GradScaler."""

    def __init__(self, loss_scale: float = 2.0**12, **kwargs):
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = loss_scale  # static scale
        self.loss_scaler = torch.amp.GradScaler('cpu', init_scale=loss_scale)
        self.cast_dtype = torch.bfloat16


def test_amp_training_with_taylor_unscales_the_gradients(
        tmp_path, mmdet_config, synth_data, monkeypatch):
    """Taylor scores accumulated under bf16 autocast with a static loss
    scale of 2**12 match those of fp32 training in magnitude (their
    ratio would be 2**24 if the scale were not divided out)."""
    log = ScoreLog(monkeypatch)
    for amp in (False, True):
        cfg = run_cfg(
            mmdet_config,
            synth_data,
            tmp_path / str(amp),
            criterion='TaylorCriterion')
        if amp:
            cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
        runner = Runner.from_cfg(cfg)
        runner.train()
        hook = hook_of(runner)
        if amp:
            assert isinstance(runner.optim_wrapper, AmpOptimWrapper)
            assert hook.criterion.loss_scale() == 2.0**12
        assert len(apis.model_plans(runner.model)) == 1
    assert len(log.scores) == 2
    totals = []
    for scores in log.scores:
        assert all(torch.isfinite(s).all() for s in scores.values())
        totals.append(sum(float(s.sum()) for s in scores.values()))
    assert totals[0] > 0 and 0.25 < totals[1] / totals[0] < 4, totals
