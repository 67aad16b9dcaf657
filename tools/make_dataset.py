# Copyright (c) mmprune contributors. All rights reserved.
"""Write the deterministic synthetic shape-detection dataset.

    python tools/make_dataset.py --out DIR [--num-train N] [--num-val M]
        [--size S] [--seed K] [--num-classes C] [--formats coco voc]
        [--difficulty hard|easy] [--overwrite]

The same arguments always give byte-identical files (see
:mod:`mmprune.datasets.synthetic` for what the images contain and how to
load them with mmdet). Prints one summary line; any bad argument is reported
by argparse with its flag name and a non-zero exit status.
"""
import argparse
import sys
import time

from mmprune.datasets.synthetic import (DIFFICULTIES, FORMATS, MAX_CLASSES,
                                        MAX_SIZE, MIN_CLASSES, MIN_SIZE,
                                        SyntheticArgumentError,
                                        make_synthetic_dataset)

# Library argument name -> CLI flag, so an error raised by the library is
# reported under the flag the user typed.
_FLAGS = {
    'out_dir': '--out',
    'num_train': '--num-train',
    'num_val': '--num-val',
    'size': '--size',
    'seed': '--seed',
    'num_classes': '--num-classes',
    'formats': '--formats',
    'difficulty': '--difficulty',
}


def _int_in(lo, hi=None):
    """An argparse ``type`` for an integer in ``[lo, hi]``.

    Raising ArgumentTypeError makes argparse prefix the message with the
    flag ("argument --size: ..."), which is what users and tests look for.
    """

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f'expected an integer, got {text!r}') from None
        if value < lo or (hi is not None and value > hi):
            rng = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
            raise argparse.ArgumentTypeError(f'must be {rng}, got {value}')
        return value

    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write the synthetic shape-detection dataset '
        '(COCO and/or VOC layout).')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument(
        '--num-train',
        type=_int_in(1),
        default=200,
        help='training images (default: 200)')
    parser.add_argument(
        '--num-val',
        type=_int_in(1),
        default=50,
        help='validation images (default: 50)')
    parser.add_argument(
        '--size',
        type=_int_in(MIN_SIZE, MAX_SIZE),
        default=320,
        help='image side in pixels (default: 320)')
    parser.add_argument(
        '--seed', type=_int_in(0), default=0, help='random seed (default: 0)')
    parser.add_argument(
        '--num-classes',
        type=_int_in(MIN_CLASSES, MAX_CLASSES),
        default=12,
        help=f'number of shape classes, {MIN_CLASSES}..{MAX_CLASSES} '
        '(default: 12)')
    parser.add_argument(
        '--formats',
        nargs='+',
        choices=FORMATS,
        default=list(FORMATS),
        help='layouts to write (default: coco voc)')
    parser.add_argument(
        '--difficulty',
        choices=DIFFICULTIES,
        default='hard',
        help='hard: clutter, small objects (benchmark); easy: plain '
        'backgrounds, 1-6 larger objects (short CPU budgets). Default: hard')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace --out if it exists and is not empty')
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    start = time.perf_counter()
    try:
        info = make_synthetic_dataset(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            size=args.size,
            seed=args.seed,
            num_classes=args.num_classes,
            formats=args.formats,
            overwrite=args.overwrite,
            difficulty=args.difficulty)
    except SyntheticArgumentError as e:
        # The library's message starts with its own argument name; say it
        # with the flag the user typed instead.
        flag = _FLAGS.get(e.argument, e.argument)
        why = str(e).split(': ', 1)[-1].replace('overwrite=True',
                                                '--overwrite')
        parser.error(f'argument {flag}: {why}')  # exits with status 2
    took = time.perf_counter() - start
    print(f'wrote {info["num_train"]} train + {info["num_val"]} val images '
          f'({info["num_train_instances"]} + {info["num_val_instances"]} '
          f'objects, {info["num_classes"]} classes, {info["size"]} px, '
          f'seed {info["seed"]}, {"+".join(info["formats"])}) to '
          f'{info["out_dir"]} in {took:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
