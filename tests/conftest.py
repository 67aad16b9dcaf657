# Copyright (c) mmprune contributors. All rights reserved.
"""Shared fixtures: a tiny synthetic COCO set, the VOC fixture, offline mmdet
configs, and a guard that turns any network access into an immediate error.
"""
import copy
import functools
import importlib.util
import ipaddress
import socket
import warnings
from pathlib import Path

import pytest

import mmprune  # noqa: F401  (torch.load safe globals before any test)
from mmprune.utils.offline import OfflineWeightsWarning, check_offline_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
VOC_ROOT = REPO_ROOT / 'tests' / 'data' / 'VOCdevkit'

# The synthetic COCO set every test shares: small enough that a Runner epoch
# takes about a second on 2 CPU cores.
SYNTH_NUM_TRAIN = 8
SYNTH_NUM_VAL = 4
SYNTH_SIZE = 128

# --------------------------------------------------------------------------
# No network: nothing may download weights or data at test time. A refused
# connection fails at once instead of hanging on a timeout.
# --------------------------------------------------------------------------
_real_connect = socket.socket.connect


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path
        return True
    host = address[0]
    if host in ('localhost', ''):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise OSError(f'tests must not use the network (connect to '
                      f'{address!r}); see tests/conftest.py')
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope='session')
def _one_thread():
    """The test models are tiny: one intra-op thread is faster than two
    that spin against other processes on a shared 2-core machine (the
    Makefile also sets OMP_NUM_THREADS=1)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope='session')
def _own_cache(tmp_path_factory):
    """Tools cache measured latency tables under $MMPRUNE_CACHE: tests
    (and the CLIs they start, which inherit the variable) use a fresh one,
    so no result depends on a table a user or an earlier run timed."""
    import os
    old = os.environ.get('MMPRUNE_CACHE')
    os.environ['MMPRUNE_CACHE'] = str(tmp_path_factory.mktemp('cache'))
    yield
    if old is None:
        os.environ.pop('MMPRUNE_CACHE', None)
    else:
        os.environ['MMPRUNE_CACHE'] = old


@pytest.fixture(autouse=True, scope='session')
def _no_network():
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
@pytest.fixture(scope='session')
def synth_data(tmp_path_factory) -> dict:
    """A tiny synthetic detection set in COCO (and VOC) layout, generated once
    per session: ``{'coco_root', 'voc_root', 'classes', ...}``."""
    from mmprune.datasets.synthetic import make_synthetic_dataset
    out_dir = tmp_path_factory.mktemp('synth')
    return make_synthetic_dataset(
        str(out_dir),
        num_train=SYNTH_NUM_TRAIN,
        num_val=SYNTH_NUM_VAL,
        size=SYNTH_SIZE,
        seed=0)


@pytest.fixture(scope='session')
def voc_root() -> str:
    """The real PASCAL VOC fixture: ``VOC2007`` and ``VOC2012``, one image
    each (see tests/data/README.md)."""
    assert (VOC_ROOT / 'VOC2007' / 'JPEGImages' / '000001.jpg').is_file()
    return str(VOC_ROOT)


# --------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _get_mmdet_config(name: str):
    from mmengine.hub import get_config

    # get_config('mmdet::...') pip-installs the package when it is missing;
    # never let it get that far.
    if importlib.util.find_spec('mmdet') is None:
        raise RuntimeError('mmdet is not installed (run `make setup`)')
    # pretrained=False (the default): it only reads mmdet's bundled
    # metafiles and config files, it loads no weights.
    return get_config(f'mmdet::{name}')


def load_mmdet_config(name: str):
    """Load ``mmdet::<name>`` with its pretrained weights made offline.

    Weights in a local cache are kept (as local paths); the others are
    removed, so the model builds from scratch. Returns a fresh copy each call.

    Args:
        name (str): Config path inside mmdet's ``configs/``, e.g.
            ``'yolox/yolox_tiny_8xb8-300e_coco.py'``.

    Returns:
        Config: The config, safe to modify.
    """
    cfg = copy.deepcopy(_get_mmdet_config(name))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', OfflineWeightsWarning)
        return check_offline_weights(cfg)


@pytest.fixture(scope='session')
def mmdet_config():
    """The :func:`load_mmdet_config` helper, as a fixture."""
    return load_mmdet_config


@pytest.fixture(scope='session')
def mmdet_registry():
    """Import every mmdet module into mmdet's registries (no default scope is
    set globally: build under ``DefaultScope.overwrite_default_scope('mmdet')``
    or through a Runner whose config has ``default_scope='mmdet'``)."""
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
