"""mmprune.utils.io: atomic writes keep the target whole and readable."""
import os
import stat

import pytest

from mmprune.utils.io import atomic_write, write_json_atomic


def test_atomic_write_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json_atomic({'a': 1}, str(tmp_path / 'r.json'))
    finally:
        os.umask(old)
    # 0666 & ~0027, as open() would give, not mkstemp's 0600
    assert stat.S_IMODE(os.stat(tmp_path / 'r.json').st_mode) == 0o640


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / 'ckpt.pth'
    path.write_text('good')

    def half_then_fail(tmp):
        with open(tmp, 'w') as f:
            f.write('partial')
        raise OSError(28, 'No space left on device')

    with pytest.raises(OSError, match='ckpt.pth'):
        atomic_write(str(path), half_then_fail)
    assert path.read_text() == 'good'
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pth']
