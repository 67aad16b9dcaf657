"""Command-line checks shared by ``tools/``: a common mistake ends in one
line that names the argument and the file, with exit status 2 (what argparse
does for a bad flag), instead of a traceback from deep inside mmengine or
``torch.load``.

Two mistakes are checked before any model is built:

* a config path that does not exist (or is a folder, or not a config
  format mmengine reads). ``pkg::path`` (``mmdet::yolox/...``) is looked up
  in the package's ``.mim/configs`` without importing the package;
* a checkpoint that is not one: a missing file, a folder, a file that
  ``torch.load`` cannot read, or one that holds pickled objects instead of
  weights (``torch.save(model)``). torch's own message for the last case
  suggests ``weights_only=False``, which would run arbitrary pickled code;
  mmprune keeps ``weights_only=True`` (see :mod:`mmprune.compat`), so the
  message says what the file holds instead.

Remote checkpoints (``https://``, ``open-mmlab://``, ...) are left to
:func:`mmprune.utils.offline.check_offline_weights`.

Example::

    args = parser.parse_args(argv)
    check_config_arg(parser, args.config)
    check_checkpoint_arg(parser, args.checkpoint, '--checkpoint')
"""
import argparse
import importlib.util
import os.path as osp
import re
import zipfile
from typing import NoReturn, Optional

# the file formats mmengine's Config.fromfile reads
CONFIG_EXTS = ('.py', '.json', '.yaml', '.yml')

_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's default (zip) format
_PICKLE_MAGIC = b'\x80'  # legacy torch.save: a pickle protocol >= 2 header


def _installed_path(package: str) -> Optional[str]:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def config_error(path: str) -> Optional[str]:
    """Why ``path`` cannot be a config, or None when it looks loadable.

    Args:
        path (str): a config file, or ``pkg::relative/path.py`` for a config
            that ships with an installed package (mmengine's convention).

    Returns:
        str | None: a one-line reason naming the file.
    """
    if '::' in path:
        package, rel = path.split('::', 1)
        root = _installed_path(package)
        if root is None:
            return f'{path!r}: package {package!r} is not installed'
        file = osp.join(root, '.mim', 'configs', rel)
        if not osp.isfile(file):
            return f'{path!r}: no such config in {package} ({file})'
        return None
    if not osp.exists(path):
        return f'no such file {path!r}'
    if osp.isdir(path):
        return f'{path!r} is a folder, not a config file'
    if not path.endswith(CONFIG_EXTS):
        return (f'{path!r} is not a config file (expected '
                f'{", ".join(CONFIG_EXTS)})')
    return None


def _load_reason(exc: BaseException, head: bytes) -> str:
    """A one-line account of why ``torch.load`` failed."""
    text = str(exc)
    m = re.search(r'Unsupported global: GLOBAL ([\w.]+)', text)
    if m:
        return (f'it holds a pickled {m.group(1)} object, not plain weights '
                f'(mmprune loads checkpoints with weights_only=True; save '
                f'model.state_dict() or an mmengine checkpoint)')
    if not head:
        return 'the file is empty'
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        return 'it was not written by torch.save'
    if 'zip archive' in text or isinstance(exc, EOFError):
        return 'the file is truncated or corrupt'
    first = text.strip().splitlines()[0] if text.strip() else ''
    first = first if len(first) <= 120 else first[:117] + '...'
    return f'torch.load failed: {type(exc).__name__}' + (f': {first}'
                                                         if first else '')


def checkpoint_error(path: str) -> Optional[str]:
    """Why ``path`` is not a checkpoint mmprune can load, or None.

    The file is opened the way the tools load it (``torch.load`` on the CPU,
    ``weights_only=True``, after ``import mmprune`` registered the safe
    globals of mmengine checkpoints); zip files are memory-mapped, so the
    check does not read the tensors.

    Args:
        path (str): a checkpoint path; remote ones are not checked here.

    Returns:
        str | None: a one-line reason naming the file.
    """
    from .offline import is_remote
    if is_remote(path):
        return None
    if not osp.exists(path):
        return f'no such file {path!r}'
    if osp.isdir(path):
        return f'{path!r} is a folder, not a checkpoint file'
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except OSError as e:
        return f'cannot read {path!r}: {e.strerror or e}'

    import torch

    import mmprune  # noqa: F401  (torch.load safe globals, mmprune.compat)
    try:
        obj = torch.load(
            path,
            map_location='cpu',
            weights_only=True,
            mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001  (any failure: reported, not raised)
        return f'{path!r} is not a checkpoint: {_load_reason(e, head)}'
    if not isinstance(obj, dict):
        return (f'{path!r} is not a checkpoint: it holds a '
                f'{type(obj).__name__}, not a dict of weights')
    return None


def arg_error(parser: argparse.ArgumentParser, arg: str, msg: str) -> NoReturn:
    """Exit like argparse does for a bad flag, in one line: ``prog: error:
    argument ARG: MSG`` on stderr, exit status 2 (no usage text)."""
    msg = ' '.join(str(msg).split())  # one line, whatever the reason held
    parser.exit(2, f'{parser.prog}: error: argument {arg}: {msg}\n')


def check_config_arg(parser: argparse.ArgumentParser,
                     path: Optional[str],
                     arg: str = 'config') -> None:
    """:func:`arg_error` unless ``path`` (when given) can be a config."""
    if path is not None:
        err = config_error(path)
        if err:
            arg_error(parser, arg, err)


def check_checkpoint_arg(parser: argparse.ArgumentParser,
                         path: Optional[str],
                         arg: str = 'checkpoint') -> None:
    """:func:`arg_error` unless ``path`` (when given) is a loadable
    checkpoint."""
    if path is not None:
        err = checkpoint_error(path)
        if err:
            arg_error(parser, arg, err)


def check_file_arg(parser: argparse.ArgumentParser, path: Optional[str],
                   arg: str) -> None:
    """:func:`arg_error` unless ``path`` (when given) is an existing file."""
    if path is None:
        return
    if not osp.exists(path):
        arg_error(parser, arg, f'no such file {path!r}')
    if osp.isdir(path):
        arg_error(parser, arg, f'{path!r} is a folder, not a file')


def add_input_size_arg(parser: argparse.ArgumentParser,
                       help: Optional[str] = 'input size for FLOPs') -> None:
    """``--input-size H W`` (default 640 640), shared by the tools."""
    parser.add_argument(
        '--input-size',
        type=int,
        nargs=2,
        default=[640, 640],
        metavar=('H', 'W'),
        help=help)


def add_residual_mode_arg(parser: argparse.ArgumentParser,
                          help: Optional[str] = None) -> None:
    """``--residual-mode`` (``coupled``/``fine``) of the channel graph."""
    parser.add_argument(
        '--residual-mode',
        default='coupled',
        choices=['coupled', 'fine'],
        help=help)


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """The allocator limits ``--min-keep`` and ``--max-prune-ratio``
    (:class:`mmprune.allocators.base.BaseAllocator` defaults)."""
    parser.add_argument('--min-keep', type=int, default=8)
    parser.add_argument('--max-prune-ratio', type=float, default=0.8)
