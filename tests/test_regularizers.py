"""Regularisers: gradients against autograd (gradcheck, double) and the
closed forms, the lambda ramp, the effect of TPP on a tiny net, and the
JSON-safe state."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from mmprune.graph import build_channel_graph
from mmprune.registry import REGULARIZERS, build_from
from mmprune.regularizers import (BNL1Regularizer, TPPRegularizer,
                                  selected_norm_ratio)


class Net(nn.Module):
    """conv(+bias)-bn-relu -> conv-bn-relu -> conv head; the first group
    is a plain conv group, the second a conv with bias but no BN."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 5, 3, padding=1)
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        return self.head(F.relu(self.c2(x)))


def make(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = Net().to(dtype)
    with torch.no_grad():
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-0.5, 0.5)
    graph = build_channel_graph(model.eval(), model,
                                [torch.randn(1, 3, 8, 8, dtype=dtype)])
    return model, graph


SELECTION = {'c1': [1, 4], 'c2': [0]}


def test_tpp_gradients_match_the_closed_form():
    model, graph = make()
    lam, lw = 0.3, 10.0
    reg = TPPRegularizer(lw_opp=lw, lambda_init=lam, lambda_max=1.0)
    reg.set_selection(graph, SELECTION)
    model.zero_grad()
    reg.loss(model).backward()
    for name, sel in (('c1', [1, 4]), ('c2', [0])):
        conv = getattr(model, name)
        w = conv.weight.detach().reshape(conv.out_channels, -1)
        n = w.shape[0]
        keep = torch.ones(n)
        keep[sel] = 0
        mask = 1 - keep[:, None] * keep[None, :]  # 1 where i or j selected
        gram = w @ w.t()
        # d/dW mean((G * M)^2) = (4 / N^2) (M * G) W, plus lambda * W_P
        want = lw * lam * 4 / n**2 * (mask * gram) @ w
        want[sel] += lam * w[sel]
        assert torch.allclose(
            conv.weight.grad.reshape(n, -1), want, rtol=1e-5, atol=1e-7), name
    # growing L2 on the selected bias; nothing on kept rows' bias
    want_b = torch.zeros(5)
    want_b[0] = lam * model.c2.bias[0].item()
    assert torch.allclose(model.c2.bias.grad, want_b)
    # BN gamma/beta L2 on the selected channels only
    for t in (model.bn1.weight, model.bn1.bias):
        want = torch.zeros(6)
        want[[1, 4]] = lam * t.detach()[[1, 4]]
        assert torch.allclose(t.grad, want)
    # the head (a consumer) gets nothing
    assert model.head.weight.grad is None


def test_tpp_and_bn_l1_pass_gradcheck_in_double():
    model, graph = make(dtype=torch.float64)
    tpp = TPPRegularizer(lw_opp=3.0, lambda_init=0.7)
    tpp.set_selection(graph, SELECTION)
    bn_l1 = BNL1Regularizer(0.2)
    bn_l1.attach(graph)

    class Term(nn.Module):

        def __init__(self, reg):
            super().__init__()
            self.model, self.reg = model, reg

        def forward(self):
            return self.reg.loss(self.model)

    for reg in (tpp, bn_l1):
        term = Term(reg)
        names = [n for n, _ in term.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_(True)
                       for _, p in term.named_parameters())

        def fn(*ts, term=term):
            return functional_call(term, dict(zip(names, ts)), ())

        assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-5)


def test_bn_l1_gradient_is_lambda_sign_gamma_on_prunable_channels():
    model, graph = make()
    # pin channel 2 of the c1 group by hand: it must not be penalised
    graph.group('c1').pinned[2] = True
    reg = build_from(REGULARIZERS, dict(type='BNL1Regularizer', weight=0.01),
                     'regularizer')
    reg.attach(graph)
    model.zero_grad()
    loss = reg.loss(model)
    free = [0, 1, 3, 4, 5]
    assert torch.isclose(loss,
                         0.01 * model.bn1.weight.detach()[free].abs().sum())
    loss.backward()
    want = 0.01 * torch.sign(model.bn1.weight.detach())
    want[2] = 0
    assert torch.allclose(model.bn1.weight.grad, want)
    assert model.bn1.bias.grad is None or \
        not model.bn1.bias.grad.any()
    with pytest.raises(ValueError, match='weight'):
        BNL1Regularizer(-1)
    with pytest.raises(RuntimeError, match='attach'):
        BNL1Regularizer().loss(model)
    state = json.loads(json.dumps(reg.state_dict()))
    other = BNL1Regularizer()
    other.attach(graph)
    other.load_state_dict(state)
    assert other.weight == 0.01 and torch.isclose(other.loss(model), loss)


def test_tpp_lambda_ramp():
    reg = TPPRegularizer(delta=0.1, interval=3, lambda_max=0.25)
    seen = []
    for _ in range(12):
        seen.append(reg.lambda_)
        reg.step()
    assert seen == pytest.approx(
        [0, 0, 0, .1, .1, .1, .2, .2, .2, .25, .25, .25])
    # TPP's paper values: +1e-4 every K=10 iterations reaches 1 after 1e5
    tpp = TPPRegularizer()
    tpp.step(10**5 - 1)
    assert tpp.lambda_ == pytest.approx(0.9999)
    tpp.step(1)
    assert tpp.lambda_ == 1.0
    # ACP-TP windows: delta such that lambda reaches lambda_max at the end
    d = TPPRegularizer.delta_for_window(500, 1.0, interval=10)
    acp = TPPRegularizer(delta=d, interval=10)
    acp.step(500)
    assert acp.lambda_ == pytest.approx(1.0)
    model, graph = make()
    acp.set_selection(graph, SELECTION, reset_lambda=True)
    assert acp.lambda_ == 0 and float(acp.loss(model)) == 0
    for kwargs, arg in ((dict(delta=-1), 'delta'),
                        (dict(interval=0), 'interval'), (dict(lambda_init=2.0),
                                                         'lambda_init')):
        with pytest.raises(ValueError, match=arg):
            TPPRegularizer(**kwargs)


def test_tpp_drives_selected_filters_to_zero_relative_to_kept():
    model, graph = make(seed=1)
    reg = TPPRegularizer(
        lw_opp=100.0, lambda_init=0.5, delta=0.5, interval=5, lambda_max=5.0)
    reg.set_selection(graph, SELECTION)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g)
    y = torch.randn(16, 2, 8, 8, generator=g)
    before = selected_norm_ratio(model, graph, SELECTION)
    model.train()
    for _ in range(40):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y) + reg.loss(model)
        loss.backward()
        opt.step()
        reg.step()
    after = selected_norm_ratio(model, graph, SELECTION)
    assert before > 0.5 and after < 0.1 * before, (before, after)
    # the BN of the selected channels shrinks too; kept ones do not vanish
    gamma = model.bn1.weight.detach().abs()
    assert gamma[[1, 4]].max() < 0.2 * gamma[[0, 2, 3, 5]].min()
    # the selected filters decorrelate from the kept ones
    w = model.c1.weight.detach().reshape(6, -1)
    cross = (w[[1, 4]] @ w[[0, 2, 3, 5]].t()).abs().max()
    kept = (w[[0, 2, 3, 5]] @ w[[0, 2, 3, 5]].t()).abs().max()
    assert cross < 0.05 * kept


def test_tpp_state_dict_roundtrips_through_json():
    model, graph = make()
    reg = TPPRegularizer(delta=0.01, interval=2)
    reg.set_selection(graph, SELECTION)
    reg.step(7)
    state = json.loads(json.dumps(reg.state_dict()))
    assert state['selection'] == {'c1': [1, 4], 'c2': [0]}
    assert state['steps'] == 7 and state['lambda_'] == pytest.approx(0.03)
    fresh = TPPRegularizer(delta=0.01, interval=2)
    fresh.load_state_dict(state, graph)
    assert fresh.lambda_ == reg.lambda_
    assert torch.isclose(fresh.loss(model), reg.loss(model))
    with pytest.raises(ValueError, match='graph'):
        TPPRegularizer().load_state_dict(state)
    with pytest.raises(ValueError, match='version'):
        fresh.load_state_dict({'steps': 1})
    with pytest.raises(ValueError, match='unknown group'):
        fresh.set_selection(graph, {'nope': [1]})
    with pytest.raises(ValueError, match='outside'):
        fresh.set_selection(graph, {'c1': [6]})
    with pytest.raises(ValueError, match='every channel'):
        fresh.set_selection(graph, {'c1': list(range(6))})
    with pytest.raises(ValueError, match='pinned'):
        fresh.set_selection(graph, {'head': [0]})


def test_tpp_on_a_coupled_group_regularises_every_producer():

    class Res(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)
            self.head = nn.Conv2d(4, 1, 1)

        def forward(self, x):
            s = self.a(x)
            return self.head(s + self.b(s))

    torch.manual_seed(0)
    model = Res()
    graph = build_channel_graph(model, model, [torch.randn(1, 3, 4, 4)])
    grp = graph.group('a')
    assert sorted(m.module for m in grp.producers()) == ['a', 'b']
    reg = TPPRegularizer(lambda_init=1.0, gram=False, bn=False)
    reg.set_selection(graph, {'a': [2]})
    reg.loss(model).backward()
    for conv in (model.a, model.b):
        assert conv.weight.grad[2].abs().sum() > 0
        assert not conv.weight.grad[[0, 1, 3]].any()
        assert torch.allclose(conv.bias.grad[2], conv.bias.detach()[2])
    assert np.isclose(selected_norm_ratio(model, graph, {'a': [2]}) > 0, 1)
