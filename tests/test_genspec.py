"""GenSpecSample pieces (Algorithm 4): acceptance, residual, rejection rate, closed form, one sampled step."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import DTYPE, dists, pairs

from specref import genspec
from specref.dists import sample_categorical, tv

TOL = 1e-12


def _close(a, b, tol=TOL):
    torch.testing.assert_close(a, b, atol=tol, rtol=0)


@given(pairs())
def test_acceptance_residual_rejection_against_any_target(q_pi):
    """For ANY target pi (not only a rule's), the default pieces emit exactly pi."""
    q, pi = q_pi
    a = genspec.acceptance(q, pi)
    pos = q > 0
    _close(a[pos], torch.minimum(torch.ones_like(q), pi / q)[pos])
    assert torch.all(a[~pos] == 1)  # never-drafted tokens get a finite placeholder
    res = genspec.residual(q, pi)
    excess = (pi - q).clamp_min(0)
    mass = excess.sum(-1, keepdim=True)
    has = mass.squeeze(-1) > 1e-12
    _close(res[has], (excess / mass)[has])
    _close(res[~has], pi[~has])  # no rejection possible: any valid distribution, pi by convention
    rej = genspec.rejection_rate(q, a)
    _close(rej, (q - pi).clamp_min(0).sum(-1))
    _close(rej, tv(pi, q))
    _close(genspec.emitted(q, a, res), pi)


@given(pairs(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_emitted_for_arbitrary_accept_and_residual(q_r, scale, mix):
    """emitted(q, a, R) = q a + (1 - sum q a) R is a distribution for any a in [0, 1] and distribution R."""
    q, r = q_r
    a = (scale * (1 - q) + mix * q).clamp(0, 1)
    out = genspec.emitted(q, a, r)
    _close(out.sum(-1), torch.ones(q.shape[0], dtype=DTYPE))
    _close(out, q * a + (1 - (q * a).sum(-1, keepdim=True)) * r)


def test_genspec_hand_case():
    # q = [1/2, 1/2, 0], pi = [1/4, 1/4, 1/2]: a = [1/2, 1/2, 1]; rejection = 1/2;
    # residual = norm([0, 0, 1/2]) = [0, 0, 1]; emitted = [1/4, 1/4, 0] + 1/2 [0, 0, 1] = pi.
    q = torch.tensor([0.5, 0.5, 0.0], dtype=DTYPE)
    pi = torch.tensor([0.25, 0.25, 0.5], dtype=DTYPE)
    a = genspec.acceptance(q, pi)
    assert a.tolist() == [0.5, 0.5, 1.0]
    assert genspec.residual(q, pi).tolist() == [0.0, 0.0, 1.0]
    assert float(genspec.rejection_rate(q, a)) == 0.5
    _close(genspec.emitted(q, a, genspec.residual(q, pi)), pi)


@given(st.integers(2, 4).flatmap(lambda v: st.tuples(dists(v), dists(v))))
def test_sample_position_law_by_quadrature(q_pi):
    """sample_position over a midpoint grid of (u_draft, u_accept, u_resid) reproduces pi to grid precision.

    Each of the three inverse-CDF / threshold events is off by at most one cell of 1/m, so every token's
    frequency is within 3 V / m of pi (a deterministic version of the statistical test).
    """
    q, pi = q_pi
    m = 48
    grid = (torch.arange(m, dtype=DTYPE) + 0.5) / m
    ud, ua, ur = (x.flatten() for x in torch.meshgrid(grid, grid, grid, indexing="ij"))
    n = ud.numel()
    a, res = genspec.acceptance(q, pi), genspec.residual(q, pi)
    tok, ok = genspec.sample_position(q.expand(n, -1), a.expand(n, -1), res.expand(n, -1), ud, ua, ur)
    freq = torch.bincount(tok, minlength=q.shape[-1]).to(DTYPE) / n
    assert float((freq - pi).abs().max()) <= 3 * q.shape[-1] / m
    # accepted steps emit the draft itself; rejection frequency matches TV(pi, q) to grid precision
    drafts = sample_categorical(q.expand(n, -1), ud)
    assert torch.equal(tok[ok], drafts[ok])
    torch.testing.assert_close(ok.to(DTYPE), (ua < a[drafts]).to(DTYPE), atol=0, rtol=0)
    assert abs(float((~ok).to(DTYPE).mean()) - float(tv(pi, q))) <= 2 * q.shape[-1] / m


def test_sample_position_exact_paths():
    q = torch.tensor([0.5, 0.5, 0.0], dtype=DTYPE)
    pi = torch.tensor([0.25, 0.25, 0.5], dtype=DTYPE)
    a, res = genspec.acceptance(q, pi), genspec.residual(q, pi)
    # (u_draft, u_accept, u_resid) -> expected (token, accepted)
    cases = {
        (0.1, 0.4, 0.9): (0, True),  # draft 0, 0.4 < a = 0.5 accepts
        (0.1, 0.5, 0.0): (2, False),  # u = a rejects (strict <); residual is [0, 0, 1]
        (0.7, 0.49, 0.3): (1, True),
        (0.7, 0.99, 0.3): (2, False),
    }
    for (ud, ua, ur), expected in cases.items():
        t = lambda x: torch.tensor(x, dtype=DTYPE)  # noqa: E731
        tok, ok = genspec.sample_position(q, a, res, t(ud), t(ua), t(ur))
        assert (int(tok), bool(ok)) == expected


def test_zero_probability_draft_tokens_are_never_sampled():
    q = torch.tensor([0.0, 1.0, 0.0], dtype=DTYPE)
    pi = torch.tensor([0.5, 0.0, 0.5], dtype=DTYPE)
    a, res = genspec.acceptance(q, pi), genspec.residual(q, pi)
    for ud, ua, ur in itertools.product([0.0, 0.5, 1 - 2.0**-53], repeat=3):
        t = lambda x: torch.tensor(x, dtype=DTYPE)  # noqa: E731
        tok, ok = genspec.sample_position(q, a, res, t(ud), t(ua), t(ur))
        assert not bool(ok) and int(tok) in (0, 2)
