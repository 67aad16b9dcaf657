# Copyright (c) mmprune contributors. All rights reserved.
"""Keep mmdet configs from reaching for the network.

mmdet configs name pretrained weights by URL, in
``init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')``
(or ``open-mmlab://...``, ``https://...``) and in a top-level ``load_from``.
mmengine fetches them at ``init_weights()`` / ``load_or_resume()`` time. On a
machine without internet that either hangs on a socket or fails deep inside
the Runner, after the dataset has been built.

:func:`check_offline_weights` resolves every such reference *without any
network call*, using only the URL tables that ship with mmengine
(``mmengine/hub/*.json``) and the local caches (the torch hub
``checkpoints/`` folder and ``MMENGINE_HOME``):

* weights found in a local cache: the reference is rewritten to that local
  path, so mmengine loads the file directly (this also sidesteps mmengine's
  ``torchvision://`` resolver, which imports torchvision);
* weights not found: ``strict=True`` raises :class:`OfflineWeightsError`
  naming every missing reference; ``strict=False`` warns
  (:class:`OfflineWeightsWarning`) and removes the reference, so the module
  falls back to its own default initialisation (trains from scratch).
"""
import copy
import json
import os
import os.path as osp
import re
import warnings
from typing import Any, List, NamedTuple, Optional

# ``scheme://``: http(s), torchvision, modelzoo, open-mmlab, openmmlab, mmcls,
# pavi, s3, petrel, ... Anything else is a local path and is left alone.
_REMOTE_RE = re.compile(r'^[A-Za-z][\w+.\-]*(:[\w+.\-]+)?://')


class OfflineWeightsError(RuntimeError):
    """A config needs remote weights that are not in any local cache."""


class OfflineWeightsWarning(UserWarning):
    """Remote weights were removed from a config; modules train from scratch.
    """


class RemoteWeights(NamedTuple):
    """One remote weight reference found in a config.

    Attributes:
        key (str): Dotted location in the config, e.g.
            ``'model.backbone.init_cfg.checkpoint'`` or ``'load_from'``.
        spec (str): The reference as written, e.g.
            ``'torchvision://resnet50'``.
        local_path (str, optional): The cached file it resolves to, or None
            when it is not available offline.
    """
    key: str
    spec: str
    local_path: Optional[str]


def is_remote(spec: Any) -> bool:
    """Whether ``spec`` is a ``scheme://`` weight reference (not a local
    path)."""
    return isinstance(spec, str) and _REMOTE_RE.match(spec) is not None


def _mmengine_hub_table(name: str) -> dict:
    """Read one of the URL tables shipped in ``mmengine/hub/`` (no import of
    torchvision, no network)."""
    import mmengine
    path = osp.join(osp.dirname(mmengine.__file__), 'hub', name)
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _mmengine_home() -> str:
    # Same rule as mmengine.runner.checkpoint._get_mmengine_home, without its
    # side effect of creating the folder.
    return osp.expanduser(
        os.getenv(
            'MMENGINE_HOME',
            osp.join(os.getenv('XDG_CACHE_HOME', '~/.cache'), 'mmengine')))


def _hub_checkpoint_dirs() -> List[str]:
    """Folders where torch / mmengine keep downloaded checkpoints."""
    dirs = []
    try:
        import torch.hub
        dirs.append(osp.join(torch.hub.get_dir(), 'checkpoints'))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    # mmengine.utils.dl_utils.load_url uses $TORCH_HOME (or
    # $XDG_CACHE_HOME/torch) + '/checkpoints', which usually equals the above.
    torch_home = osp.expanduser(
        os.getenv('TORCH_HOME',
                  osp.join(os.getenv('XDG_CACHE_HOME', '~/.cache'), 'torch')))
    dirs.append(osp.join(torch_home, 'checkpoints'))
    return list(dict.fromkeys(dirs))


def _spec_to_url(spec: str) -> Optional[str]:
    """Map a ``torchvision://``, ``open-mmlab://`` or ``mmcls://`` name to its
    download URL (or to a path relative to ``MMENGINE_HOME``)."""
    scheme, name = spec.split('://', 1)
    if scheme in ('http', 'https'):
        return spec
    if scheme in ('torchvision', 'modelzoo'):
        table = _mmengine_hub_table('torchvision_0.12.json')
        return table.get(name)
    if scheme in ('open-mmlab', 'openmmlab'):
        table = _mmengine_hub_table('openmmlab.json')
        external = osp.join(_mmengine_home(), 'open_mmlab.json')
        if osp.isfile(external):
            with open(external) as f:
                table.update(json.load(f))
        name = _mmengine_hub_table('deprecated.json').get(name, name)
        return table.get(name)
    if scheme == 'mmcls':
        return _mmengine_hub_table('mmcls.json').get(name)
    return None  # pavi://, s3://, ...: no local cache we know of


def resolve_local(spec: str) -> Optional[str]:
    """Return the local file a remote weight reference resolves to, or None.

    Never touches the network: it only reads mmengine's URL tables and checks
    the torch hub / mmengine caches for the file name of the URL.

    Args:
        spec (str): ``torchvision://resnet50``, ``open-mmlab://...``,
            ``https://.../x.pth`` and the like.

    Returns:
        str, optional: Absolute path of the cached checkpoint, or None.
    """
    url = _spec_to_url(spec)
    if url is None:
        return None
    if not is_remote(url):  # open-mmlab:// entries may be MMENGINE_HOME paths
        path = osp.join(_mmengine_home(), url)
        return path if osp.isfile(path) else None
    filename = osp.basename(url.split('?', 1)[0])
    for folder in _hub_checkpoint_dirs():
        path = osp.join(folder, filename)
        if osp.isfile(path):
            return path
    return None


def find_remote_weights(cfg: Any,
                        check_init_cfg: bool = True,
                        check_load_from: bool = True) -> List[RemoteWeights]:
    """List the remote weight references of a config.

    Looks at ``load_from`` (top level), every ``init_cfg`` of type
    ``'Pretrained'`` (a dict or an item of a list) and legacy string
    ``pretrained=`` arguments, at any depth.

    Args:
        cfg (Config | dict): An mmengine config.
        check_init_cfg (bool): Look at ``init_cfg`` / ``pretrained``.
            Defaults to True.
        check_load_from (bool): Look at ``load_from``. Defaults to True.

    Returns:
        list[RemoteWeights]: In config order.
    """
    found: List[RemoteWeights] = []
    if check_load_from and is_remote(cfg.get('load_from')):
        found.append(
            RemoteWeights('load_from', cfg['load_from'],
                          resolve_local(cfg['load_from'])))
    if check_init_cfg:
        for key, spec, _, _ in _walk_pretrained(cfg, ''):
            found.append(RemoteWeights(key, spec, resolve_local(spec)))
    return found


def _is_mapping(node: Any) -> bool:
    from mmengine.config import Config
    return isinstance(node, (dict, Config))


def _walk_pretrained(node: Any, prefix: str):
    """Yield ``(key, spec, container, slot)`` for each remote pretrained
    reference below ``node``; ``container[slot]`` is what to edit."""
    if _is_mapping(node):
        for k, v in node.items():
            key = f'{prefix}.{k}' if prefix else str(k)
            if k == 'init_cfg':
                # init_cfg is one dict or a list of them
                is_list = isinstance(v, (list, tuple))
                for i, item in enumerate(v if is_list else [v]):
                    if (isinstance(item, dict)
                            and item.get('type') == 'Pretrained'
                            and is_remote(item.get('checkpoint'))):
                        where = f'{key}[{i}]' if is_list else key
                        yield (f'{where}.checkpoint', item['checkpoint'], node,
                               (k, i if is_list else None))
            elif k == 'pretrained' and is_remote(v):
                yield key, v, node, (k, None)
            else:
                yield from _walk_pretrained(v, key)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk_pretrained(v, f'{prefix}[{i}]')


def check_offline_weights(cfg: Any,
                          strict: bool = False,
                          check_init_cfg: bool = True,
                          check_load_from: bool = True):
    """Make a config's pretrained weights loadable without a network.

    References found in a local cache are rewritten to the cached file. The
    others raise (``strict=True``) or are removed with an
    :class:`OfflineWeightsWarning` (``strict=False``): a ``Pretrained``
    ``init_cfg`` is dropped (the module keeps its default initialisation), a
    string ``pretrained`` becomes None and ``load_from`` becomes None.

    Args:
        cfg (Config | dict): An mmengine config. It is not modified.
        strict (bool): Raise instead of removing. Defaults to False.
        check_init_cfg (bool): Handle ``init_cfg`` / ``pretrained`` (False for
            testing, where the checkpoint overrides them). Defaults to True.
        check_load_from (bool): Handle ``load_from``. Defaults to True.

    Returns:
        Config | dict: A deep copy of ``cfg`` that needs no download.

    Raises:
        OfflineWeightsError: ``strict=True`` and a reference is not cached.

    Examples:
        >>> cfg = dict(model=dict(backbone=dict(init_cfg=dict(
        ...     type='Pretrained', checkpoint='torchvision://resnet18'))))
        >>> cfg = check_offline_weights(cfg)  # warns unless cached
    """
    found = find_remote_weights(cfg, check_init_cfg, check_load_from)
    missing = [r for r in found if r.local_path is None]
    if missing and strict:
        lines = '\n'.join(f'  {r.key} = {r.spec!r}' for r in missing)
        raise OfflineWeightsError(
            'These pretrained weights are not available offline (not in the '
            f'torch hub cache {_hub_checkpoint_dirs()[0]} nor in '
            f'{_mmengine_home()}):\n{lines}\nPut the files there, point the '
            'config at local paths, or remove them to train from scratch.')
    cfg = copy.deepcopy(cfg)
    if not found:
        return cfg
    if check_load_from and is_remote(cfg.get('load_from')):
        cfg['load_from'] = resolve_local(cfg['load_from'])
    if check_init_cfg:
        # Edit after the walk: mutating while iterating a dict is unsafe.
        edits = list(_walk_pretrained(cfg, ''))
        for _, spec, container, (k, i) in reversed(edits):
            local = resolve_local(spec)
            if k == 'pretrained':
                container[k] = local
            elif i is None:
                if local is None:
                    del container[k]
                else:
                    container[k]['checkpoint'] = local
            else:
                items = list(container[k])
                if local is None:
                    del items[i]
                else:
                    items[i] = dict(items[i], checkpoint=local)
                container[k] = items or None
    if missing:
        lines = '\n'.join(f'  {r.key} = {r.spec!r}' for r in missing)
        warnings.warn(
            'Pretrained weights are not available offline and were removed '
            f'(these modules train from scratch):\n{lines}',
            OfflineWeightsWarning,
            stacklevel=2)
    return cfg
