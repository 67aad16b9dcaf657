"""``make bench``: run the benchmark suites and write the report.

    python benchmarks/run.py [--suites quality speed tools]
        [--preset smoke|session|quick|full] [--resume] [--jobs N]
        [--device cpu|cuda] [--out DIR] [--only PATTERN ...] [--list]

The default preset is ``session`` (the committed accuracy numbers, about
2.5 h on 2 cores, quality suite only); a plan with the run count and the
estimated time (:mod:`benchmarks.plan`) is printed first.

* ``quality`` (:mod:`benchmarks.quality`): first the dense references of
  protocol 'trained' (:mod:`benchmarks.reference`: trained once per hash of
  what made them, reused from ``--ref-cache``), then every (model,
  protocol, budget, method, seed) run of the preset, ``--jobs`` at a time
  (default 2 on CPU, 1 thread each: on 2 cores that beats one run with 2
  threads), each in its own process; a run starts as soon as its
  reference is there, so the other core trains runs of the model whose
  reference is done while the longer reference still trains; then times
  the final models of each table together (interleaved, nothing else
  running);
* ``speed`` (:mod:`benchmarks.speed`): dense vs compact latency, torch
  eager and onnxruntime, one job at a time;
* ``tools`` (:mod:`benchmarks.tool_costs`): graph analysis vs
  Torch-Pruning, hook overhead, one prune event; one job at a time;
* then :mod:`benchmarks.report` writes ``<out>/results.md`` and
  ``<out>/plots/``.

Every job writes its JSON (``<out>/<suite>/<job>.json``) atomically as soon
as it ends. ``--resume`` skips jobs whose JSON says 'ok' (or
'unreachable') and, for protocol 'trained', names the reference it will
start from (a retrained reference reruns its runs), so an interrupted
bench loses at most the runs in flight.
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
    p.add_argument(
        '--suites',
        nargs='+',
        default=None,
        choices=SUITES,
        help="default: the preset's suites (all for most)")
    p.add_argument('--preset', default='session', choices=sorted(PRESETS))
    p.add_argument(
        '--seeds',
        type=int,
        nargs='+',
        default=None,
        help="run these seeds at every budget instead of the preset's "
        '(more seeds for a comparison; with --only, alongside a running '
        'bench: its environment goes to env_seeds.json)')
    p.add_argument(
        '--resume',
        action='store_true',
        help='skip jobs whose result JSON is already there')
    p.add_argument(
        '--jobs',
        type=int,
        default=None,
        help='quality runs at a time (default: 2 on CPU, 1 on '
        'CUDA)')
    p.add_argument(
        '--threads',
        type=int,
        default=1,
        help='torch/onnxruntime intra-op threads per job')
    p.add_argument(
        '--device',
        choices=('cpu', 'cuda'),
        default=None,
        help='default: cuda when available, else cpu')
    p.add_argument(
        '--difficulty',
        choices=('easy', 'hard'),
        default=None,
        help="override the preset's synthetic data profile")
    p.add_argument(
        '--out',
        default=None,
        help='results folder (default: benchmarks/results/'
        '<preset>[_cuda])')
    p.add_argument(
        '--work-dir',
        default=None,
        help='logs, training folders, models, ONNX files '
        '(default: work_dirs/bench/<preset>[_cuda])')
    p.add_argument(
        '--data-root',
        default=osp.join(ROOT, 'data', 'synth_bench'),
        help='where the synthetic sets are generated (reused)')
    p.add_argument(
        '--ref-cache',
        default=None,
        help='trained reference checkpoints, keyed by a hash of '
        'what made them (default: work_dirs/bench/references)')
    p.add_argument(
        '--only',
        nargs='+',
        default=None,
        metavar='PATTERN',
        help='run only jobs whose id matches one of these '
        'shell patterns (e.g. "yolox_tiny__*__fcp__*")')
    p.add_argument(
        '--list', action='store_true', help='print the jobs and exit')
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
    elif job['suite'] == 'reference':
        from benchmarks.reference import run_job
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
    """A result that may be kept: done, and from the same reference."""
    if job['suite'] == 'reference':
        return False  # always re-checked: cheap when the cache is sound
    try:
        with open(job['out']) as f:
            res = json.load(f)
    except (OSError, ValueError):
        return False
    ref = job.get('reference')
    if ref and res.get('reference_key') != ref['key']:
        return False
    return res.get('status') in DONE


def _summary(res: dict) -> str:
    if res.get('status') != 'ok':
        return f"{res.get('status')}: {str(res.get('error', ''))[:200]}"
    if res['suite'] == 'reference':
        return (f"mAP {100 * res['mAP']:.2f} after {res['epochs']} epochs" +
                (' (cached)' if res.get('cached') else
                 f", train {res['train_wall_s']:.0f} s"))
    if res['suite'] == 'quality':
        return (f"mAP {100 * res['mAP']:.2f}, FLOPs x{res['flops_ratio']:.3f}"
                f", train {res['train_wall_s']:.0f} s")
    return f"ok ({res.get('wall_s', 0):.0f} s)"


def _failed_result(job: dict, error: str) -> dict:
    keep = ('model', 'method', 'label', 'budget', 'seed', 'epochs',
            'batch_size', 'mode', 'kind', 'input_size', 'preset', 'protocol',
            'key')
    res = dict({k: job[k]
                for k in keep if k in job},
               id=job['id'],
               suite=job['suite'],
               status='failed',
               error=error)
    if job.get('reference'):
        res['reference_key'] = job['reference'].get('key')
    return res


def run_jobs(jobs: List[dict], parallel: int, log_dir: str, env: dict,
             label: str) -> List[dict]:
    """Run ``jobs`` as child processes, ``parallel`` at a time, in order;
    a job starts once the jobs it ``needs`` (ids) have ended 'ok' (needs
    outside ``jobs`` count as met), and fails without running when one of
    them failed. A job that dies without writing its JSON gets a 'failed'
    one with its log's tail."""
    from mmprune.utils.io import write_json_atomic
    os.makedirs(log_dir, exist_ok=True)
    pending, running, done = list(jobs), {}, []
    ids = {j['id'] for j in jobs}
    state = {}  # job id -> its result status
    total = len(jobs)

    def blocked(job):
        """'wait', 'failed: <need>' or None (ready)."""
        for n in job.get('needs', ()):
            if n not in ids:
                continue
            if n not in state:
                return 'wait'
            if state[n] != 'ok':
                return f'failed: {n}'
        return None

    def finish(job, res, t0):
        state[job['id']] = res.get('status')
        done.append(res)
        print(
            f'[bench] {label} done {job["id"]} in '
            f'{time.perf_counter() - t0:.0f} s: {_summary(res)}',
            flush=True)

    try:
        while pending or running:
            for job in list(pending):
                why = blocked(job)
                if why and why.startswith('failed'):
                    pending.remove(job)
                    res = _failed_result(
                        job, f'not run: the job it needs {why[8:]} did not '
                        f'end ok')
                    write_json_atomic(res, job['out'])
                    finish(job, res, time.perf_counter())
            while len(running) < parallel:
                job = next((j for j in pending if blocked(j) is None), None)
                if job is None:
                    break
                pending.remove(job)
                job_file = osp.join(log_dir, job['id'] + '.job.json')
                write_json_atomic(job, job_file)
                log_path = osp.join(log_dir, job['id'] + '.log')
                log = open(log_path, 'w')
                proc = subprocess.Popen([
                    sys.executable,
                    osp.abspath(__file__), '--worker', job_file
                ],
                                        stdout=log,
                                        stderr=subprocess.STDOUT,
                                        env=env,
                                        cwd=ROOT)
                running[proc] = (job, log, log_path, time.perf_counter())
                print(
                    f'[bench] {label} {len(done) + len(running)}/{total} '
                    f'start {job["id"]} (log: {log_path})',
                    flush=True)
            if pending and not running and all(blocked(j) for j in pending):
                raise RuntimeError(f'jobs wait for each other: '
                                   f'{[j["id"] for j in pending][:5]}')
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
                    res = _failed_result(
                        job, f'the job process exited with code '
                        f'{proc.returncode} without a result; log tail:\n'
                        f'{tail}')
                    write_json_atomic(res, job['out'])
                finish(job, res, t0)
    except KeyboardInterrupt:
        for proc, (job, log, _, _) in running.items():
            proc.terminate()  # only the children this call started
            proc.wait()
            log.close()
        raise
    return done


def select(jobs: List[dict], args) -> List[dict]:
    """``--only`` and ``--resume``. A reference job is kept when a kept run
    needs it or ``--only`` names it; it is never skipped as finished (it is
    only re-checked when its cache is sound)."""

    def named(j):
        return any(fnmatch.fnmatch(j['id'], p) for p in args.only)

    runs = [j for j in jobs if j['suite'] != 'reference']
    if args.only:
        runs = [j for j in runs if named(j)]
    if args.resume:
        skipped = [j['id'] for j in runs if _finished(j)]
        if skipped:
            print(
                f'[bench] --resume: {len(skipped)} finished job(s) kept',
                flush=True)
        runs = [j for j in runs if j['id'] not in skipped]
    needed = {n for j in runs for n in j.get('needs', ())}
    keep = {j['id'] for j in runs} | needed
    return [
        j for j in jobs if j['id'] in keep or (
            j['suite'] == 'reference' and args.only and named(j))
    ]


# --------------------------------------------------------------- latency
def quality_latency(results_dir: str, runs: int, device: str, threads: int,
                    resume: bool) -> None:
    """Time the saved final models of each (model, budget) table together,
    with its model's dense runs."""
    import glob

    from benchmarks.env import environment
    from benchmarks.quality import (PROTOCOL_TAGS, group_key,
                                    measure_group_latency)
    from mmprune.utils.io import write_json_atomic
    results = []
    for path in sorted(glob.glob(osp.join(results_dir, 'quality', '*.json'))):
        if osp.basename(path).startswith('latency__'):
            continue
        with open(path) as f:
            r = json.load(f)
        if r.get('status') != 'ok':
            continue
        if not osp.isfile(r.get('model_file', '')):
            print(
                f"[bench] latency: {r['id']}: its model file "
                f"{r.get('model_file')} is gone; not timed",
                flush=True)
            continue
        results.append(r)
    groups = {}
    for r in results:
        if r['method'] != 'dense':
            groups.setdefault(group_key(r), []).append(r)
    for key, members in sorted(groups.items()):
        first = members[0]
        dense = [
            r for r in results
            if r['method'] == 'dense' and r['model'] == first['model']
            and PROTOCOL_TAGS[r.get('protocol', 'scratch')] == PROTOCOL_TAGS[
                first.get('protocol', 'scratch')]
        ]
        members = dense + members
        ids = sorted(r['id'] for r in members)
        out = osp.join(results_dir, 'quality', f'latency__{key}.json')
        if resume and osp.isfile(out):
            with open(out) as f:
                if sorted(json.load(f).get('ids', [])) == ids:
                    continue
        t0 = time.perf_counter()
        lat = measure_group_latency(members, runs, device, threads)
        write_json_atomic(
            dict(
                group=key,
                ids=ids,
                latency=lat,
                runs=runs,
                batch=1,
                threads=threads,
                device=device,
                env=environment(device)), out)
        print(
            f'[bench] latency {key}: {len(members)} models in '
            f'{time.perf_counter() - t0:.0f} s',
            flush=True)


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
    if args.seeds:
        preset['quality']['seeds'] = tuple(args.seeds)
        preset['quality'].pop('seeds_by_budget', None)
    suites = args.suites or list(preset.get('suites', SUITES))
    tag = args.preset + ('_cuda' if device == 'cuda' else '')
    results_dir = osp.abspath(
        args.out or osp.join(ROOT, 'benchmarks', 'results', tag))
    work_root = osp.abspath(
        args.work_dir or osp.join(ROOT, 'work_dirs', 'bench', tag))
    parallel = args.jobs or (1 if device == 'cuda' else max(
        1, min(2,
               os.cpu_count() or 1)))
    child_env = dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        PYTHONPATH=os.pathsep.join([ROOT] + [
            p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p
        ]))
    if device == 'cpu' and torch.cuda.is_available():
        child_env['CUDA_VISIBLE_DEVICES'] = ''  # the Runner would pick cuda
    log_dir = osp.join(work_root, 'logs')

    from benchmarks.quality import prepare_data, quality_jobs
    from benchmarks.reference import DEFAULT_CACHE, reference_jobs
    from benchmarks.speed import speed_jobs
    from benchmarks.tool_costs import tool_jobs
    data = None
    jobs = {}
    if 'quality' in suites:
        spec = preset['quality']['data']
        if args.list:
            data = dict(coco_root='<generated>', classes=[])
        else:
            t0 = time.perf_counter()
            data = prepare_data(args.data_root, spec)
            print(
                f'[bench] data: {data["coco_root"]} '
                f'({time.perf_counter() - t0:.0f} s)',
                flush=True)
        refs = reference_jobs(preset, results_dir, work_root, data, device,
                              args.threads, args.ref_cache or DEFAULT_CACHE)
        # the longest reference first: the other slot runs the jobs of the
        # model whose reference is ready (run_jobs)
        from benchmarks.plan import job_seconds
        refs.sort(key=job_seconds, reverse=True)
        jobs['quality'] = refs + quality_jobs(preset, results_dir, work_root,
                                              data, device, args.threads,
                                              {r['model']: r
                                               for r in refs})
    if 'speed' in suites:
        jobs['speed'] = speed_jobs(preset, results_dir, work_root, device,
                                   args.threads)
    if 'tools' in suites:
        jobs['tools'] = tool_jobs(preset, results_dir, device, args.threads)
    jobs = {k: select(v, args) for k, v in jobs.items()}
    if jobs.get('quality'):
        from benchmarks.plan import describe, schedule
        from benchmarks.reference import check_cached
        cached = {} if args.list else {
            j['id']: check_cached(j['cache_dir'], j['key'])[0] is not None
            for j in jobs['quality'] if j['suite'] == 'reference'
        }
        print(
            describe(schedule(jobs['quality'], parallel, cached), parallel),
            flush=True)
    if args.list:
        for suite, js in jobs.items():
            for j in js:
                print(f'{suite}\t{j["id"]}\t{j["out"]}')
        return 0

    # `kill` (SIGTERM) stops the children too, like Ctrl-C (run_jobs)
    signal.signal(signal.SIGTERM, _interrupt)
    t_start = time.perf_counter()
    env = environment(device)
    env.update(
        preset=args.preset,
        suites=suites,
        parallel_jobs=parallel,
        threads=args.threads,
        argv=sys.argv[1:] if argv is None else list(argv),
        preset_settings=preset)
    write_json_atomic(
        env,
        osp.join(results_dir, 'env_seeds.json' if args.seeds else 'env.json'))
    failed = 0
    if jobs.get('quality'):
        done = run_jobs(jobs['quality'], parallel, log_dir, child_env,
                        'quality')
        failed += sum(r.get('status') not in DONE for r in done)
    if 'quality' in suites:
        quality_latency(results_dir, preset['quality']['latency_runs'], device,
                        args.threads, args.resume)
    for suite in ('speed', 'tools'):
        if jobs.get(suite):  # timings: one at a time, nothing beside them
            done = run_jobs(jobs[suite], 1, log_dir, child_env, suite)
            failed += sum(r.get('status') not in DONE for r in done)
    if not args.no_report:
        from benchmarks.report import write_report
        print(f'[bench] report: {write_report(results_dir)}', flush=True)
    print(
        f'[bench] finished in {time.perf_counter() - t_start:.0f} s; '
        f'{failed} job(s) failed',
        flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(
            f'[bench] interrupted ({e or "Ctrl-C"}); finished jobs are '
            f'kept: run again with --resume',
            flush=True)
        sys.exit(130)
