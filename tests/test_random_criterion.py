"""RandomCriterion (the benchmark's floor): deterministic given the seed and
the group, independent of the scoring order and the global torch RNG,
different across seeds and groups, and usable through the registry."""
import pytest
import torch
from test_graph_toy import ToyDetector

from mmprune.criteria import RandomCriterion
from mmprune.graph import build_channel_graph
from mmprune.registry import CRITERIA, build_from


@pytest.fixture(scope='module')
def toy():
    model = ToyDetector().eval()
    graph = build_channel_graph(model, model, [torch.randn(1, 3, 32, 32)])
    assert len(graph.prunable_groups()) >= 3
    return model, graph


def test_same_seed_same_scores_whatever_the_order_and_rng(toy):
    model, graph = toy
    torch.manual_seed(0)
    a = RandomCriterion(seed=3).score(model, graph)
    torch.manual_seed(123)
    torch.rand(1000)  # training consumes the global RNG differently
    crit = RandomCriterion(seed=3)
    names = [g.name for g in graph.prunable_groups()]
    # scored one group at a time, in reverse order
    b = {n: crit.score(model, graph, names=[n])[n] for n in reversed(names)}
    assert set(a) == set(b) == set(names)
    for n in names:
        g = next(x for x in graph.prunable_groups() if x.name == n)
        assert a[n].shape == (g.width, ) and a[n].dtype == torch.float32
        assert torch.equal(a[n], b[n])
        assert ((a[n] >= 0) & (a[n] < 1)).all()


def test_other_seed_or_group_other_draw(toy):
    model, graph = toy
    a = RandomCriterion(seed=0).score(model, graph)
    b = RandomCriterion(seed=1).score(model, graph)
    assert all(not torch.equal(a[n], b[n]) for n in a)
    # two groups of the same width do not get the same draw
    crit = RandomCriterion(seed=0)

    class G:

        def __init__(self, name):
            self.name, self.width = name, 16

    assert not torch.equal(
        crit.score_group(None, G('x')), crit.score_group(None, G('y')))
    assert torch.equal(
        crit.score_group(None, G('x')),
        RandomCriterion(0).score_group(None, G('x')))


def test_registered_and_validated():
    crit = build_from(CRITERIA, dict(type='RandomCriterion', seed=5),
                      'criterion')
    assert isinstance(crit, RandomCriterion) and crit.seed == 5
    for bad in (-1, 1.5, True, '2'):
        with pytest.raises(ValueError, match='seed must be'):
            RandomCriterion(seed=bad)
