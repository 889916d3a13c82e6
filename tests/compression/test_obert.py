"""oBERT against a direct dense computation: the block-diagonal empirical Fisher inverse, the scores (single weights
and 4-blocks), the optimal update, and that the update beats plain zeroing on a quadratic problem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.obert import default_fisher_block, fisher_inverse, obert_scores, obert_update

DAMP = 1e-2


def problem(out: int = 3, inp: int = 8, m: int = 6, seed: int = 0):
    """A weight (out, inp) and m loss closures whose gradients are known: loss_i = <w, G_i>, so grad_i = G_i."""
    gen = torch.Generator().manual_seed(seed)
    w = nn.Parameter(torch.randn(out, inp, generator=gen))
    grads = torch.randn(m, out, inp, generator=gen)
    losses = [lambda g=g: (w * g).sum() for g in grads]
    return w, grads, losses


def dense_inverse(grads: torch.Tensor, fisher_block: int, damp: float = DAMP) -> np.ndarray:
    """The full (n, n) block-diagonal F^-1 with F_b = damp I + (1/m) sum_i g_ib g_ib^T, in float64 numpy."""
    g = grads.reshape(len(grads), -1).double().numpy()  # (m, n)
    m, n = g.shape
    padded = math.ceil(n / fisher_block) * fisher_block
    g = np.pad(g, ((0, 0), (0, padded - n)))
    inv = np.zeros((padded, padded))
    for s in range(0, padded, fisher_block):
        b = g[:, s : s + fisher_block]
        inv[s : s + fisher_block, s : s + fisher_block] = np.linalg.inv(damp * np.eye(fisher_block) + b.T @ b / m)
    return inv[:n, :n]


@pytest.mark.parametrize("fisher_block", [8, 10])  # 10 does not divide 24 weights: the last block is padded
def test_single_weight_scores_and_update_match_dense(fisher_block):
    w, grads, losses = problem()
    finv = fisher_inverse({"w": w}, losses, fisher_block=fisher_block, damp=DAMP)
    assert finv.num_grads == 6 and finv.inv["w"].shape == (3, fisher_block, fisher_block)
    S, wd = dense_inverse(grads, fisher_block), w.detach().double().flatten().numpy()
    scores = obert_scores({"w": w}, finv)["w"]
    assert scores.shape == (3, 8)
    np.testing.assert_allclose(scores.flatten().numpy(), wd**2 / (2 * np.diag(S)), rtol=1e-4)

    q = 13  # prune one weight: delta w = -F^-1 e_q w_q / [F^-1]_qq (oBERT eq. 4 with |Q| = 1)
    pruned = torch.zeros(24, dtype=torch.bool)
    pruned[q] = True
    obert_update({"w": w}, finv, {"w": pruned.view(3, 8)})
    expect = wd - S[:, q] * wd[q] / S[q, q]
    assert w[1, 5].item() == 0.0
    np.testing.assert_allclose(w.detach().flatten().numpy(), expect, rtol=1e-4, atol=1e-6)


def test_four_block_scores_and_update_match_dense():
    w, grads, losses = problem(out=3, inp=8, m=5, seed=1)
    finv = fisher_inverse({"w": w}, losses, fisher_block=16, damp=DAMP)  # 24 weights: 2 blocks, the last padded
    S, wd = dense_inverse(grads, 16), w.detach().double().flatten().numpy()
    scores = obert_scores({"w": w}, finv, block=4)["w"]
    assert scores.shape == (3, 2)
    for k, score in enumerate(scores.flatten().tolist()):  # 1/2 w_Q^T ([F^-1]_QQ)^-1 w_Q
        Q = slice(4 * k, 4 * k + 4)
        assert score == pytest.approx(0.5 * wd[Q] @ np.linalg.solve(S[Q, Q], wd[Q]), rel=1e-4)

    Q = np.arange(8, 12)  # the 4-block (row 1, columns 0..3): delta w = -F^-1 e_Q ([F^-1]_QQ)^-1 w_Q
    pruned = torch.zeros(24, dtype=torch.bool)
    pruned[Q] = True
    obert_update({"w": w}, finv, {"w": pruned.view(3, 8)})
    expect = wd - S[:, Q] @ np.linalg.solve(S[np.ix_(Q, Q)], wd[Q])
    np.testing.assert_allclose(w.detach().flatten().numpy(), expect, rtol=1e-4, atol=1e-6)
    assert (w[1, :4] == 0).all()


def test_several_pruned_weights_get_the_joint_optimum():
    """Several weights of one Fisher block pruned at once: the update is the exact constrained optimum
    -F^-1[:, P] ([F^-1]_PP)^-1 w_P (the same formula with Q = P), not a sum of single-weight updates."""
    w, grads, losses = problem(out=2, inp=8, m=20, seed=2)
    finv = fisher_inverse({"w": w}, losses, fisher_block=8, damp=DAMP)
    S, wd = dense_inverse(grads, 8), w.detach().double().flatten().numpy()
    P = np.array([1, 2, 6, 9, 15])  # three in the first Fisher block, two in the second
    pruned = torch.zeros(16, dtype=torch.bool)
    pruned[P] = True
    obert_update({"w": w}, finv, {"w": pruned.view(2, 8)})
    expect = wd - S[:, P] @ np.linalg.solve(S[np.ix_(P, P)], wd[P])
    np.testing.assert_allclose(w.detach().flatten().numpy(), expect, rtol=1e-4, atol=1e-6)
    assert (w.detach().flatten()[P] == 0).all()


def test_pruned_weights_do_not_enter_the_fisher():
    """A weight that is exactly zero is pruned: its gradient is masked (as SparseML does), so its row and column of
    F are damp * e_q and the update can never move it."""
    w, grads, losses = problem(seed=3)
    with torch.no_grad():
        w[0, 3] = 0.0
    finv = fisher_inverse({"w": w}, losses, fisher_block=8, damp=DAMP)
    row = finv.inv["w"][0, 3]  # F^-1 row of weight (0, 3)
    assert row[3].item() == pytest.approx(1 / DAMP, rel=1e-5) and row[torch.arange(8) != 3].abs().max() < 1e-6
    pruned = w.detach() == 0
    pruned[0, 5] = True
    obert_update({"w": w}, finv, {"w": pruned})
    assert w[0, 3].item() == 0.0 and w[0, 5].item() == 0.0


def test_update_beats_plain_zeroing_on_a_quadratic():
    """Least squares with correlated inputs: the empirical Fisher of per-sample gradients at the solution is
    proportional to the Hessian, so oBERT's update nearly reaches the best loss on the kept weights, far below zeroing the same weights."""
    gen = torch.Generator().manual_seed(0)
    n, m = 16, 256
    mix = torch.randn(n, n, generator=gen) / n**0.5 + torch.eye(n)
    x = torch.randn(m, n, generator=gen) @ mix  # (m, n) correlated features
    y = x @ torch.randn(n, generator=gen) + 0.1 * torch.randn(m, generator=gen)
    solution = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]

    def loss(v: torch.Tensor) -> float:
        return float(0.5 * ((x @ v - y) ** 2).mean())

    w = nn.Parameter(solution.clone()[None])  # (1, n)
    losses = [lambda i=i: 0.5 * ((x[i] @ w[0] - y[i]) ** 2) for i in range(m)]
    finv = fisher_inverse({"w": w}, losses, fisher_block=n, damp=1e-6)
    scores = obert_scores({"w": w}, finv)["w"]
    pruned = scores <= scores.flatten().kthvalue(n // 2).values  # the half with the lowest scores
    zeroed = solution.masked_fill(pruned[0], 0.0)
    obert_update({"w": w}, finv, {"w": pruned})
    assert (w.detach()[pruned] == 0).all()
    keep = (~pruned[0]).nonzero()[:, 0]
    best = torch.zeros(n)  # the true optimum on the kept weights: least squares restricted to them
    best[keep] = torch.linalg.lstsq(x[:, keep], y[:, None]).solution[:, 0]
    got, zero, opt = loss(w.detach()[0]), loss(zeroed), loss(best)
    assert got < 0.6 * zero and got < 1.1 * opt, (got, zero, opt)  # measured: 0.95 vs 1.83, optimum 0.91


def test_bad_inputs_are_one_line_errors():
    w, _, losses = problem()
    with pytest.raises(EncoderforgeError, match="fisher_block=10 .*block=4"):
        fisher_inverse({"w": w}, losses, fisher_block=10, damp=DAMP, block=4)
    with pytest.raises(EncoderforgeError, match="damp"):
        fisher_inverse({"w": w}, losses, damp=0.0)
    with pytest.raises(EncoderforgeError, match="no loss"):
        fisher_inverse({"w": w}, [], fisher_block=8)
    frozen = nn.Parameter(torch.ones(2, 4), requires_grad=False)
    with pytest.raises(EncoderforgeError, match="frozen"):
        fisher_inverse({"f": frozen}, [lambda: frozen.sum()], fisher_block=8)
    assert default_fisher_block(1) == 50 and default_fisher_block(4) == 48
