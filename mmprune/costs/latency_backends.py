"""Timing a module's forward on a named deployment backend.

A latency table is only as good as its timings, and each runtime times
differently. Three backends (:data:`BACKENDS`):

* ``torch``: eager PyTorch on the CPU.
* ``cuda``: eager PyTorch on a CUDA device. Kernels are queued
  asynchronously, so the clock is read only after
  ``torch.cuda.synchronize()``: once before a forward (the queue is empty,
  earlier work is not charged to it) and once after (its kernels are done).
  Without the second sync one times the kernel *launches*, a few
  microseconds whatever the width. ``sync``, ``clock`` and ``device`` can
  be injected, which is how the tests cover this path on a CPU.
* ``onnxruntime``: the module exported to ONNX (the TorchScript exporter,
  as :mod:`mmprune.export.onnx` does; the dynamo exporter needs onnxscript)
  and run by an onnxruntime CPU session.

Every backend offers :meth:`runner` (a zero-argument callable that runs one
complete, synchronised forward), :meth:`time` (median of ``runs`` timed
calls after ``warmup``, in ms) and names itself with ``name``,
``device_kind`` and :meth:`device_name` (the key of a table).
"""
import io
import os
import platform
import time
import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

BACKENDS = ('torch', 'cuda', 'onnxruntime')


def cpu_name() -> str:
    """The CPU model of this machine (``/proc/cpuinfo``), for the key."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown cpu'


def _median(ts: Sequence[float]) -> float:
    ts = sorted(ts)
    mid = len(ts) // 2
    return ts[mid] if len(ts) % 2 else (ts[mid - 1] + ts[mid]) / 2


class TorchBackend:
    """Eager PyTorch, timed with ``clock`` (``time.perf_counter``).

    Args:
        device (str): where modules and inputs are put. Defaults to 'cpu'.
        runs (int): timed calls per measurement (median). Defaults to 5.
        warmup (int): untimed calls first. Defaults to 2.
        clock (Callable): seconds now. Defaults to ``time.perf_counter``.
        sync (Callable | None): waits for queued work; None: nothing to
            wait for (CPU).
    """

    name = 'torch'
    device_kind = 'cpu'

    def __init__(self,
                 device: str = 'cpu',
                 runs: int = 5,
                 warmup: int = 2,
                 clock: Callable[[], float] = time.perf_counter,
                 sync: Optional[Callable[[], None]] = None):
        for arg, v, least in (('runs', runs, 1), ('warmup', warmup, 0)):
            if isinstance(v, bool) or not (isinstance(v, int) and v >= least):
                raise ValueError(f'{self.name} backend: {arg} must be an int '
                                 f'>= {least}, got {v!r}')
        self.device = torch.device(device)
        self.runs, self.warmup = runs, warmup
        self.clock = clock
        self.sync = sync or (lambda: None)

    def device_name(self) -> str:
        return cpu_name()

    def threads(self) -> int:
        return torch.get_num_threads()

    def runner(self, module: nn.Module, args: Sequence) -> Callable:
        """A callable running ``module(*args)`` once, synchronised. The
        module is moved to the backend's device in place."""
        module = module.to(self.device).eval()
        args = tuple(
            a.to(self.device) if isinstance(a, torch.Tensor) else a
            for a in args)
        sync = self.sync

        def run():
            with torch.no_grad():
                out = module(*args)
            sync()
            return out

        return run

    def time(self, module: nn.Module, args: Sequence) -> float:
        """Median ms of one forward of ``module(*args)``."""
        run = self.runner(module, args)
        for _ in range(self.warmup):
            run()
        spent = []
        for _ in range(self.runs):
            self.sync()  # nothing queued before the clock starts
            t0 = self.clock()
            run()  # ends with sync: the forward's kernels are done
            spent.append(self.clock() - t0)
        return _median(spent) * 1e3


class CudaBackend(TorchBackend):
    """Eager PyTorch on CUDA, synchronised around every timed forward.

    Args:
        device (str): a CUDA device. Defaults to 'cuda'.
        sync (Callable | None): defaults to ``torch.cuda.synchronize``;
            injected (with ``clock`` and a CPU ``device``) only by tests.
        Others: see :class:`TorchBackend`.
    """

    name = 'cuda'
    device_kind = 'cuda'

    def __init__(self,
                 device: str = 'cuda',
                 runs: int = 5,
                 warmup: int = 2,
                 clock: Callable[[], float] = time.perf_counter,
                 sync: Optional[Callable[[], None]] = None):
        if sync is None:
            if not torch.cuda.is_available():
                raise RuntimeError(
                    "latency backend 'cuda': no CUDA device is available "
                    '(torch.cuda.is_available() is False); measure the '
                    'table on the GPU machine and pass it as a file')
            dev = torch.device(device)
            sync = lambda: torch.cuda.synchronize(dev)  # noqa: E731
        super().__init__(device, runs, warmup, clock, sync)

    def device_name(self) -> str:
        if self.device.type == 'cuda':
            return torch.cuda.get_device_name(self.device)
        return f'{self.device.type} (injected sync)'


class OnnxRuntimeBackend(TorchBackend):
    """The module exported to ONNX and run by onnxruntime on the CPU.

    Args:
        threads (int | None): onnxruntime intra-op threads. Defaults to
            torch's thread count (``OMP_NUM_THREADS``), so torch and
            onnxruntime tables of one machine compare.
        opset (int): ONNX opset. Defaults to 17.
        Others: see :class:`TorchBackend`.
    """

    name = 'onnxruntime'
    device_kind = 'cpu'

    def __init__(self,
                 runs: int = 5,
                 warmup: int = 2,
                 clock: Callable[[], float] = time.perf_counter,
                 threads: Optional[int] = None,
                 opset: int = 17):
        super().__init__('cpu', runs, warmup, clock, None)
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise RuntimeError("latency backend 'onnxruntime': the "
                               'onnxruntime package is not installed') from e
        self.num_threads = int(threads or torch.get_num_threads())
        self.opset = opset

    def threads(self) -> int:
        return self.num_threads

    def runner(self, module: nn.Module, args: Sequence) -> Callable:
        import onnxruntime as ort
        if not all(isinstance(a, torch.Tensor) for a in args):
            raise ValueError(f'onnxruntime backend: {type(module).__name__} '
                             f'takes non-tensor arguments; cannot export it')
        buf = io.BytesIO()
        names = [f'in{i}' for i in range(len(args))]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # TracerWarnings on Python ints
            torch.onnx.export(
                module.cpu().eval(),
                tuple(args),
                buf,
                dynamo=False,
                opset_version=self.opset,
                input_names=names,
                do_constant_folding=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(
            buf.getvalue(), opts, providers=['CPUExecutionProvider'])
        given = dict(zip(names, args))
        # the exporter drops inputs the graph does not read
        feed = {
            i.name: given[i.name].detach().cpu().numpy()
            for i in sess.get_inputs()
        }
        return lambda: sess.run(None, feed)


def make_backend(name: str, runs: int = 5, warmup: int = 2, **kwargs):
    """The backend called ``name`` (one of :data:`BACKENDS`)."""
    if name == 'torch':
        return TorchBackend('cpu', runs, warmup, **kwargs)
    if name == 'cuda':
        return CudaBackend(
            kwargs.pop('device', 'cuda'), runs, warmup, **kwargs)
    if name == 'onnxruntime':
        return OnnxRuntimeBackend(runs, warmup, **kwargs)
    raise ValueError(f'latency backend must be one of {BACKENDS}, got '
                     f'{name!r}')


def threads_note() -> str:
    """``OMP_NUM_THREADS`` as set, for the table's meta."""
    return os.environ.get('OMP_NUM_THREADS', 'unset')
