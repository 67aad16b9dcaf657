"""PruningSchedule: when prune events happen and what each one targets.

The one owner of the event positions, the ramp and the per-event targets
(the hook asks it *whether* a position is an event; the adaptive allocator
asks it *how much* an event keeps). Ramp: the cumulative reduction at event
``k`` of ``E`` is ``R_k = R* ramp(k / E)`` with ``R* = 1 - target`` and

* ``'cubic'``: ``ramp(x) = 1 - (1 - x)^3`` (Zhu & Gupta, "To prune, or not
  to prune", https://arxiv.org/abs/1710.01878; ACP-TP, docs/methods.md
  §1B(b));
* ``'linear'``: ``ramp(x) = x`` (GCP-FRS's ``R* k / K``, docs/methods.md
  §4(e)).

Positions are epochs (or iterations) *after* which an event runs: ``begin,
begin + interval, ...``. With soft events (a selection is penalised or
masked first) the selection of event ``k`` is removed at the next position,
the last one ``interval`` after the last event.

A method preset's schedule (``MethodPreset.schedules``) is written for the
paper's run length (e.g. ACP-TP on YOLOX: events every 10 epochs from 30,
18 of them, in 300 epochs). :meth:`PruningSchedule.from_preset` rescales it
to the run's ``max_epochs`` (**our choice**): ``begin`` and ``interval``
scale with ``max_epochs / total_epochs`` (at least 1), and as many of the
preset's events are kept as fit before the scaled position of its last.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

RAMPS = ('cubic', 'linear')


def _check_int(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not (isinstance(v, int) and v >= low):
        raise ValueError(f'{name} must be an int >= {low}, got {v!r}')
    return v


def ramp_reduction(reduction: float,
                   event: int,
                   num_events: int,
                   ramp: str = 'cubic') -> float:
    """Cumulative reduction ``R_k`` of event ``event`` out of
    ``num_events`` for a final reduction ``reduction`` (``R*``)."""
    if ramp not in RAMPS:
        raise ValueError(f'ramp must be one of {RAMPS}, got {ramp!r}')
    _check_int('num_events', num_events, 1)
    if isinstance(
            event,
            bool) or not (isinstance(event, int) and 1 <= event <= num_events):
        raise ValueError(f'event must be an int in [1, {num_events}], got '
                         f'{event!r}')
    x = event / num_events
    return reduction * ((1.0 - (1.0 - x)**3) if ramp == 'cubic' else x)


@dataclass(frozen=True)
class PruningSchedule:
    """Event positions and the ramped cost target of each event.

    Args:
        positions (tuple[int]): increasing epochs/iterations (>= 1) after
            which an event runs.
        interval (int): spacing of the positions (the soft window length).
        target (float): final cost to keep, fraction of dense in (0, 1].
        ramp (str): ``'cubic'`` or ``'linear'``.
        soft (bool): each event selects; the removal comes one position
            later.

    Examples:
        >>> s = PruningSchedule.from_range(30, 200, 10, target=0.5)
        >>> s.num_events, s.target_at(1)   # (18, 0.92...)
    """
    positions: Tuple[int, ...]
    interval: int
    target: float
    ramp: str = 'cubic'
    soft: bool = False

    def __post_init__(self):
        if not (isinstance(self.target,
                           (int, float)) and not isinstance(self.target, bool)
                and 0 < self.target <= 1):
            raise ValueError(f'target must be in (0, 1], got '
                             f'{self.target!r}')
        if self.ramp not in RAMPS:
            raise ValueError(f'ramp must be one of {RAMPS}, got '
                             f'{self.ramp!r}')
        _check_int('interval', self.interval, 1)
        pos = list(self.positions)
        if not pos or pos[0] < 1 or any(b <= a for a, b in zip(pos, pos[1:])):
            raise ValueError(f'positions must be increasing ints >= 1, got '
                             f'{pos!r}')

    @classmethod
    def from_range(cls,
                   begin: int,
                   end: Optional[int] = None,
                   interval: int = 1,
                   **kwargs) -> 'PruningSchedule':
        """Events after ``begin, begin + interval, ...`` up to ``end``
        (defaults to ``begin``: one event)."""
        end = begin if end is None else end
        for name, v in (('begin', begin), ('end', end), ('interval',
                                                         interval)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f'{name} must be a non-negative int, got '
                                 f'{v!r}')
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}')
        if begin < 1:
            # events run after an epoch (iteration) ends: "after 0" never
            # happens; pruning before any training is tools/prune.py's job
            raise ValueError(f'begin must be >= 1 (the first event runs '
                             f'after epoch/iteration `begin`), got {begin}')
        if end < begin:
            raise ValueError(f'end ({end}) is before begin ({begin})')
        return cls(tuple(range(begin, end + 1, interval)), interval, **kwargs)

    @classmethod
    def from_preset(cls, schedule: dict, max_epochs: int, what: str,
                    **kwargs) -> 'PruningSchedule':
        """The preset ``schedule`` (``unit='epoch'``: ``begin``,
        ``interval``, ``num_events``, ``total_epochs``) rescaled to a run of
        ``max_epochs`` (see the module docstring). ``what`` names the
        preset in errors. Other units cannot be rescaled without the
        dataset size: a ValueError says what to set."""
        _check_int('max_epochs', max_epochs, 1)
        if schedule.get('unit') != 'epoch':
            raise ValueError(
                f'{what}: the preset schedule {schedule!r} is not in epochs, '
                f'so no default schedule can be derived from it; set '
                f'begin=, end= and interval= (and by_epoch=False for '
                f'iterations) on ChannelPruningHook')
        begin, interval = schedule['begin'], schedule['interval']
        events, total = schedule['num_events'], schedule['total_epochs']
        scale = max_epochs / total
        last = begin + (events - 1) * interval  # the preset's last event
        b = max(1, round(begin * scale))
        step = max(1, round(interval * scale))
        end = max(b, round(last * scale))
        n = min(events, (end - b) // step + 1)
        soft = kwargs.get('soft', False)
        if b + (n - 1 + int(soft)) * step > max_epochs:
            raise ValueError(
                f'{what}: a run of {max_epochs} epochs is too short for the '
                f'preset schedule {schedule!r}; set begin=, end= and '
                f'interval= on ChannelPruningHook')
        return cls(tuple(b + i * step for i in range(n)), step, **kwargs)

    # --------------------------------------------------------------- when
    @property
    def num_events(self) -> int:
        return len(self.positions)

    def cut_positions(self) -> List[int]:
        """Positions where pending soft selections are removed."""
        return list(self.positions[1:]) + [self.positions[-1] + self.interval]

    @property
    def last(self) -> int:
        """The last position that changes the model."""
        return self.cut_positions()[-1] if self.soft else self.positions[-1]

    def is_event(self, position: int, events_done: int) -> bool:
        """Whether the next event (``events_done + 1``) runs after
        ``position``."""
        return events_done < self.num_events and \
            self.positions[events_done] == position

    def is_cut(self, position: int) -> bool:
        """Whether a pending soft selection is removed after
        ``position``."""
        return self.soft and position in self.cut_positions()

    def window(self, iters_per_unit: int = 1) -> int:
        """Iterations from a soft selection to its removal."""
        return self.interval * iters_per_unit

    # ----------------------------------------------------------- how much
    def target_at(self, event: int) -> float:
        """Cost to keep after ``event`` (1-based), fraction of dense."""
        return 1.0 - ramp_reduction(1.0 - self.target, event, self.num_events,
                                    self.ramp)

    def targets(self) -> List[float]:
        return [self.target_at(k) for k in range(1, self.num_events + 1)]


def fits(schedule: PruningSchedule,
         total: int,
         unit: str,
         no_aug_epochs: Sequence[int] = ()) -> None:
    """Raise a ValueError when ``schedule`` ends after ``total`` units or
    inside YOLOX's no-augmentation epochs (``no_aug_epochs``: the
    ``num_last_epochs`` of each ``YOLOXModeSwitchHook``; mmdet switches at
    the start of 1-based epoch ``total - n``, so ``total - n`` is already
    trained without Mosaic/MixUp)."""
    last = schedule.last
    if last > total:
        raise ValueError(f'ChannelPruningHook: the schedule ends at {unit} '
                         f'{last}, after training ends ({total} {unit}s)')
    for n in no_aug_epochs:
        if n and last > total - n - 1:
            raise ValueError(
                f'ChannelPruningHook: pruning must finish before the '
                f'no-augmentation epochs (the last {n + 1}: mmdet switches '
                f'at the start of epoch {total - n}); the schedule ends at '
                f'epoch {last}')


__all__ = ['PruningSchedule', 'RAMPS', 'ramp_reduction', 'fits']
