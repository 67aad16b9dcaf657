"""Atomic file writes: a reader (or a resumed run) never sees half a file.

Every file mmprune writes that something else reads back (checkpoints,
exports, reports, plans, summaries) goes through :func:`atomic_write`: the
content is written to a temporary file in the *same* folder (so the final
``os.replace`` is a rename on one filesystem, which POSIX makes atomic) and
only then renamed over the target. If writing fails (full disk, a killed
process, an exception in the writer) the target is untouched and the
temporary file is removed.
"""
import json
import os
import os.path as osp
import tempfile
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` and rename ``tmp_path`` to ``path``.

    Args:
        path: the final file. Its folder is created when missing.
        write: writes the complete content to the path it is given.

    Raises:
        OSError: naming ``path`` when its folder cannot be created or
            written, or when writing fails part-way (a full disk); the
            original error is chained and ``path`` is left as it was.
            (A RuntimeError of the writer, which is how ``torch.save``
            reports a failed write, is re-raised naming ``path`` too.)
    """
    folder = osp.dirname(osp.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=folder, prefix='.tmp_' + osp.basename(path))
        os.close(fd)
    except OSError as e:
        raise OSError(e.errno, f'cannot write {path!r}: {e.strerror}') from e
    try:
        write(tmp)
        # mkstemp makes the file 0600; give it the mode a plain open() would
        # (0666 minus the umask), so other users can read exports as usual
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if osp.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):  # full disk, quota, file size limit
            raise OSError(e.errno, f'cannot write {path!r}: '
                          f'{e.strerror or e}') from e
        if isinstance(e, RuntimeError):
            # torch.save reports a failed write as a RuntimeError of its
            # zip writer ("unexpected pos ...", "iostream error"), without
            # the path
            raise RuntimeError(f'cannot write {path!r}: {e}') from e
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""

    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)

    atomic_write(path, write)


def write_json_atomic(obj: Any, path: str, indent: int = 2) -> None:
    """Write ``obj`` as JSON (sorted keys, trailing newline) atomically."""
    write_text_atomic(path,
                      json.dumps(obj, indent=indent, sort_keys=True) + '\n')
