"""Checkpoints that are never half-written: an atomic mmengine file backend.

mmengine 0.10.7 saves a checkpoint with ``LocalBackend.put``, which opens the
final path with ``open(path, 'wb')`` and writes the bytes into it. A full
disk or a process killed during that write leaves a truncated file under
the final name, and when that name already held a good checkpoint (a
re-run in the same work dir, ``save_last``/``save_best`` files) the good
one is gone: ``--resume`` then fails to unpickle it.

:class:`AtomicLocalBackend` is ``LocalBackend`` whose ``put``/``put_text``
go through :func:`mmprune.utils.io.atomic_write` (temporary file in the same
folder, then ``os.replace``). :func:`make_checkpoints_atomic` points a
runner's ``CheckpointHook`` at it; :class:`ChannelPruningHook` calls it in
``before_run``, because a pruned run's checkpoints are the only record of
its structure.

Note:
    mmengine's CheckpointHook still writes ``work_dir/last_checkpoint``
    with a plain ``open`` *after* the checkpoint; it only ever names a
    checkpoint that was completely written.
"""
from mmengine.fileio import LocalBackend, register_backend

from ..utils.io import atomic_write

BACKEND = 'mmprune_atomic_local'


class AtomicLocalBackend(LocalBackend):
    """``LocalBackend`` whose writes replace the target atomically."""

    def put(self, obj: bytes, filepath) -> None:

        def write(tmp):
            with open(tmp, 'wb') as f:
                f.write(obj)

        atomic_write(str(filepath), write)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


register_backend(BACKEND, AtomicLocalBackend, force=True)


def make_checkpoints_atomic(runner) -> bool:
    """Make the runner's CheckpointHook save through
    :class:`AtomicLocalBackend`. Returns True when it did.

    Left alone: a hook given its own ``backend_args``/``file_client_args``
    (a remote store chose its own semantics) or an ``out_dir`` that is not a
    local path.
    """
    from mmengine.hooks import CheckpointHook
    for hook in getattr(runner, 'hooks', ()):
        if not isinstance(hook, CheckpointHook):
            continue
        out = hook.out_dir if isinstance(hook.out_dir, str) else \
            runner.work_dir
        if hook.backend_args is not None or \
                hook.file_client_args is not None or '://' in str(out):
            return False
        # NOTE: CheckpointHook builds its file backend from backend_args in
        # before_train, and passes them to every save_checkpoint call
        hook.backend_args = dict(backend=BACKEND)
        return True
    return False
