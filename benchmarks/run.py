"""``make bench``: run the benchmark suites and write the report.

    python benchmarks/run.py [--suites quality speed tools]
        [--preset smoke|quick|full] [--resume] [--jobs N]
        [--device cpu|cuda] [--out DIR] [--only PATTERN ...] [--list]

* ``quality`` (:mod:`benchmarks.quality`): trains every (model, budget,
  method, seed) run of the preset, ``--jobs`` at a time (default 2 on CPU,
  1 thread each: on 2 cores that beats one run with 2 threads), each in
  its own process; then times the final models of each table together
  (interleaved, nothing else running);
* ``speed`` (:mod:`benchmarks.speed`): dense vs compact latency, torch
  eager and onnxruntime, one job at a time;
* ``tools`` (:mod:`benchmarks.tool_costs`): graph analysis vs
  Torch-Pruning, hook overhead, one prune event; one job at a time;
* then :mod:`benchmarks.report` writes ``<out>/results.md`` and
  ``<out>/plots/``.

Every job writes its JSON (``<out>/<suite>/<job>.json``) atomically as soon
as it ends. ``--resume`` skips jobs whose JSON says 'ok' (or
'unreachable'), so an interrupted bench loses at most the runs in flight.
Logs go to ``<work-dir>/logs/<job>.log``; training folders and the saved
final models to ``<work-dir>/quality/<job>/``.

``--device`` defaults to ``cuda`` when ``torch.cuda.is_available()``: the
same suites then train and time on the GPU (one job at a time; onnxruntime
rows only when it has a CUDA provider) and the results go to
``benchmarks/results/<preset>_cuda``.
"""
import argparse
import fnmatch
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from typing import List

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.presets import PRESETS, SUITES, get_preset  # noqa: E402

DONE = ('ok', 'unreachable')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--suites', nargs='+', default=list(SUITES),
                   choices=SUITES)
    p.add_argument('--preset', default='quick', choices=sorted(PRESETS))
    p.add_argument('--resume', action='store_true',
                   help='skip jobs whose result JSON is already there')
    p.add_argument('--jobs', type=int, default=None,
                   help='quality runs at a time (default: 2 on CPU, 1 on '
                   'CUDA)')
    p.add_argument('--threads', type=int, default=1,
                   help='torch/onnxruntime intra-op threads per job')
    p.add_argument('--device', choices=('cpu', 'cuda'), default=None,
                   help='default: cuda when available, else cpu')
    p.add_argument('--difficulty', choices=('easy', 'hard'), default=None,
                   help="override the preset's synthetic data profile")
    p.add_argument('--out', default=None,
                   help='results folder (default: benchmarks/results/'
                   '<preset>[_cuda])')
    p.add_argument('--work-dir', default=None,
                   help='logs, training folders, models, ONNX files '
                   '(default: work_dirs/bench/<preset>[_cuda])')
    p.add_argument('--data-root', default=osp.join(ROOT, 'data',
                                                   'synth_bench'),
                   help='where the synthetic sets are generated (reused)')
    p.add_argument('--only', nargs='+', default=None, metavar='PATTERN',
                   help='run only jobs whose id matches one of these '
                   'shell patterns (e.g. "yolox_tiny__*__fcp__*")')
    p.add_argument('--list', action='store_true',
                   help='print the jobs and exit')
    p.add_argument('--no-report', action='store_true')
    p.add_argument('--worker', metavar='JOB_JSON', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.jobs is not None and a.jobs < 1:
        p.error(f'--jobs must be >= 1, got {a.jobs}')
    if a.threads < 1:
        p.error(f'--threads must be >= 1, got {a.threads}')
    return a


# ---------------------------------------------------------------- worker
def worker(job_file: str) -> int:
    """Run one job in this process (the child side of :func:`run_jobs`)."""
    with open(job_file) as f:
        job = json.load(f)
    if job['suite'] == 'quality':
        from benchmarks.quality import run_job
    elif job['suite'] == 'speed':
        from benchmarks.speed import run_job
    elif job['suite'] == 'tools':
        from benchmarks.tool_costs import run_job
    else:
        raise ValueError(f"{job_file}: unknown suite {job['suite']!r}")
    res = run_job(job)
    return 0 if res.get('status') in DONE else 1


# ----------------------------------------------------------- scheduling
def _finished(job: dict) -> bool:
    try:
        with open(job['out']) as f:
            return json.load(f).get('status') in DONE
    except (OSError, ValueError):
        return False


def _summary(res: dict) -> str:
    if res.get('status') != 'ok':
        return f"{res.get('status')}: {str(res.get('error', ''))[:200]}"
    if res['suite'] == 'quality':
        return (f"mAP {100 * res['mAP']:.2f}, FLOPs x{res['flops_ratio']:.3f}"
                f", train {res['train_wall_s']:.0f} s")
    return f"ok ({res.get('wall_s', 0):.0f} s)"


def run_jobs(jobs: List[dict], parallel: int, log_dir: str, env: dict,
             label: str) -> List[dict]:
    """Run ``jobs`` as child processes, ``parallel`` at a time; a job that
    dies without writing its JSON gets a 'failed' one with its log's
    tail."""
    from mmprune.utils.io import write_json_atomic
    os.makedirs(log_dir, exist_ok=True)
    pending, running, done = list(jobs), {}, []
    total = len(jobs)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                job_file = osp.join(log_dir, job['id'] + '.job.json')
                write_json_atomic(job, job_file)
                log_path = osp.join(log_dir, job['id'] + '.log')
                log = open(log_path, 'w')
                proc = subprocess.Popen(
                    [sys.executable, osp.abspath(__file__), '--worker',
                     job_file], stdout=log, stderr=subprocess.STDOUT,
                    env=env, cwd=ROOT)
                running[proc] = (job, log, log_path, time.perf_counter())
                print(f'[bench] {label} {len(done) + len(running)}/{total} '
                      f'start {job["id"]} (log: {log_path})', flush=True)
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                job, log, log_path, t0 = running.pop(proc)
                log.close()
                try:
                    with open(job['out']) as f:
                        res = json.load(f)
                except (OSError, ValueError):
                    with open(log_path) as f:
                        tail = f.read()[-3000:]
                    keep = ('model', 'method', 'label', 'budget', 'seed',
                            'epochs', 'batch_size', 'mode', 'kind',
                            'input_size', 'preset')
                    res = dict({k: job[k] for k in keep if k in job},
                               id=job['id'], suite=job['suite'],
                               status='failed',
                               error=f'the job process exited with code '
                               f'{proc.returncode} without a result; log '
                               f'tail:\n{tail}')
                    write_json_atomic(res, job['out'])
                done.append(res)
                print(f'[bench] {label} done {job["id"]} in '
                      f'{time.perf_counter() - t0:.0f} s: {_summary(res)}',
                      flush=True)
    except KeyboardInterrupt:
        for proc, (job, log, _, _) in running.items():
            proc.terminate()  # only the children this call started
            proc.wait()
            log.close()
        raise
    return done


def select(jobs: List[dict], args) -> List[dict]:
    if args.only:
        jobs = [j for j in jobs
                if any(fnmatch.fnmatch(j['id'], p) for p in args.only)]
    if args.resume:
        skipped = [j['id'] for j in jobs if _finished(j)]
        if skipped:
            print(f'[bench] --resume: {len(skipped)} finished job(s) kept',
                  flush=True)
        jobs = [j for j in jobs if j['id'] not in skipped]
    return jobs


# --------------------------------------------------------------- latency
def quality_latency(results_dir: str, runs: int, device: str, threads: int,
                    resume: bool) -> None:
    """Time the saved final models of each (model, budget) table together,
    with its model's dense runs."""
    import glob
    from benchmarks.env import environment
    from benchmarks.quality import group_key, measure_group_latency
    from mmprune.utils.io import write_json_atomic
    results = []
    for path in sorted(glob.glob(osp.join(results_dir, 'quality',
                                          '*.json'))):
        if osp.basename(path).startswith('latency__'):
            continue
        with open(path) as f:
            r = json.load(f)
        if r.get('status') != 'ok':
            continue
        if not osp.isfile(r.get('model_file', '')):
            print(f"[bench] latency: {r['id']}: its model file "
                  f"{r.get('model_file')} is gone; not timed", flush=True)
            continue
        results.append(r)
    groups = {}
    for r in results:
        if r['method'] != 'dense':
            groups.setdefault(group_key(r), []).append(r)
    for key, members in sorted(groups.items()):
        dense = [r for r in results if r['method'] == 'dense' and
                 r['model'] == members[0]['model']]
        members = dense + members
        ids = sorted(r['id'] for r in members)
        out = osp.join(results_dir, 'quality', f'latency__{key}.json')
        if resume and osp.isfile(out):
            with open(out) as f:
                if sorted(json.load(f).get('ids', [])) == ids:
                    continue
        t0 = time.perf_counter()
        lat = measure_group_latency(members, runs, device, threads)
        write_json_atomic(dict(group=key, ids=ids, latency=lat, runs=runs,
                               batch=1, threads=threads, device=device,
                               env=environment(device)), out)
        print(f'[bench] latency {key}: {len(members)} models in '
              f'{time.perf_counter() - t0:.0f} s', flush=True)


# ------------------------------------------------------------------ main
def _interrupt(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    import torch
    from benchmarks.env import environment
    from mmprune.utils.io import write_json_atomic
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: torch.cuda.is_available() is False')
    preset = get_preset(args.preset, args.difficulty)
    tag = args.preset + ('_cuda' if device == 'cuda' else '')
    results_dir = osp.abspath(args.out or osp.join(ROOT, 'benchmarks',
                                                   'results', tag))
    work_root = osp.abspath(args.work_dir or osp.join(ROOT, 'work_dirs',
                                                      'bench', tag))
    parallel = args.jobs or (1 if device == 'cuda' else
                             max(1, min(2, os.cpu_count() or 1)))
    child_env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                     MKL_NUM_THREADS=str(args.threads),
                     PYTHONPATH=os.pathsep.join(
                         [ROOT] + [p for p in os.environ.get(
                             'PYTHONPATH', '').split(os.pathsep) if p]))
    if device == 'cpu' and torch.cuda.is_available():
        child_env['CUDA_VISIBLE_DEVICES'] = ''  # the Runner would pick cuda
    log_dir = osp.join(work_root, 'logs')

    from benchmarks.quality import prepare_data, quality_jobs
    from benchmarks.speed import speed_jobs
    from benchmarks.tool_costs import tool_jobs
    data = None
    jobs = {}
    if 'quality' in args.suites:
        spec = preset['quality']['data']
        if args.list:
            data = dict(coco_root='<generated>', classes=[])
        else:
            t0 = time.perf_counter()
            data = prepare_data(args.data_root, spec)
            print(f'[bench] data: {data["coco_root"]} '
                  f'({time.perf_counter() - t0:.0f} s)', flush=True)
        jobs['quality'] = quality_jobs(preset, results_dir, work_root, data,
                                       device, args.threads)
    if 'speed' in args.suites:
        jobs['speed'] = speed_jobs(preset, results_dir, work_root, device,
                                   args.threads)
    if 'tools' in args.suites:
        jobs['tools'] = tool_jobs(preset, results_dir, device, args.threads)
    jobs = {k: select(v, args) for k, v in jobs.items()}
    if args.list:
        for suite, js in jobs.items():
            for j in js:
                print(f'{suite}\t{j["id"]}\t{j["out"]}')
        return 0

    # `kill` (SIGTERM) stops the children too, like Ctrl-C (run_jobs)
    signal.signal(signal.SIGTERM, _interrupt)
    t_start = time.perf_counter()
    env = environment(device)
    env.update(preset=args.preset, suites=args.suites,
               parallel_jobs=parallel, threads=args.threads,
               argv=sys.argv[1:] if argv is None else list(argv),
               preset_settings=preset)
    write_json_atomic(env, osp.join(results_dir, 'env.json'))
    failed = 0
    if jobs.get('quality'):
        done = run_jobs(jobs['quality'], parallel, log_dir, child_env,
                        'quality')
        failed += sum(r.get('status') not in DONE for r in done)
    if 'quality' in args.suites:
        quality_latency(results_dir, preset['quality']['latency_runs'],
                        device, args.threads, args.resume)
    for suite in ('speed', 'tools'):
        if jobs.get(suite):  # timings: one at a time, nothing beside them
            done = run_jobs(jobs[suite], 1, log_dir, child_env, suite)
            failed += sum(r.get('status') not in DONE for r in done)
    if not args.no_report:
        from benchmarks.report import write_report
        print(f'[bench] report: {write_report(results_dir)}', flush=True)
    print(f'[bench] finished in {time.perf_counter() - t_start:.0f} s; '
          f'{failed} job(s) failed', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f'[bench] interrupted ({e or "Ctrl-C"}); finished jobs are '
              f'kept: run again with --resume', flush=True)
        sys.exit(130)
