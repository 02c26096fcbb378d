"""Offline evaluation of deferral rules on held-out logs: L_spec, deferral and rejection rates per alpha.

Methods: ``draft``, ``specdecode`` (the two ends), ``chow``, ``diff``, ``opt``, ``token_v1``..``token_v3``,
every learned head passed in (cascade or token), ``oracle`` (Lemma 4 with the realized losses), and any
rule added with :func:`specref.rules.register` that decides from position statistics (asked for by name). Each
row of the result is one (method, alpha, loss) with the mean over logged positions of: ``l_spec``
(``quality_loss + alpha * rejection``), ``quality_loss``, ``deferral_rate``, ``rejection_rate``, and
the approximation diagnostics ``rejection_bound`` (certified bound on the error of ``rejection_rate``; 0 when
exact) and ``argmax_uncertain`` (fraction of rows whose argmax loss could be off). See
:mod:`specref.logs.offline` for what is exact.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from specref import rules
from specref.atomic import write_atomic
from specref.heads.features import FeatureSpec, candidate_set, context_features, token_features
from specref.logs.offline import (
    Outcome,
    cascade_decisions,
    cascade_outcome,
    learned_token_decisions,
    token_outcome_candidates,
    token_outcome_exact,
)
from specref.logs.schema import TOKEN_RULES

__all__ = ["BASELINES", "CASCADE_BASELINES", "FIELDS", "check_alphas", "check_methods", "evaluate", "head_estimates",
           "plot", "registered_methods", "write_csv"]

CASCADE_BASELINES = ("draft", "specdecode", "chow", "diff", "opt")
#: Every baseline method name, in table order (also the names a learned head may not take).
BASELINES = (*CASCADE_BASELINES, *TOKEN_RULES, "oracle")
FIELDS = (
    "method", "kind", "alpha", "loss", "l_spec", "quality_loss", "deferral_rate", "rejection_rate",
    "rejection_bound", "argmax_uncertain", "rows",
)
_CHUNK = 8192


def registered_methods() -> tuple[str, ...]:
    """Rules added with :func:`specref.rules.register`: evaluated like the cascade baselines, when they
    decide from position statistics (:meth:`specref.rules.Rule.decide_position`)."""
    return tuple(n for n in rules.NAMES() if rules.sweep_grid(n) is not None)


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The method names asked for, deduplicated in order; a ValueError names any unknown one."""
    wanted = tuple(dict.fromkeys(m.strip() for m in methods))
    known = (*BASELINES, *registered_methods())
    unknown = [m for m in wanted if m not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown method {', '.join(repr(m) for m in unknown) or repr('')}; "
                         f"choose from {', '.join(known)} (or --plugin MODULE to register your own)")
    return wanted


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """The alpha grid, deduplicated in order: each finite and >= 0 (alpha prices a rejection in
    ``L_spec = loss + alpha * rejection``; a negative price would reward rejections)."""
    out = tuple(dict.fromkeys(float(a) for a in alphas))
    bad = [a for a in out if not (math.isfinite(a) and a >= 0)]
    if bad or not out:
        raise ValueError(f"alpha {', '.join(repr(a) for a in bad) or '(none)'} is out of range: every alpha of "
                         "the offline evaluation must be a finite number >= 0")
    return out


def _predict(head: Any, x: Tensor) -> Tensor:
    """``head.predict`` on the head's device (torch heads may live on a GPU), back on ``x``'s device."""
    from specref.heads.modules import check_finite

    buffers = getattr(head, "buffers", None)
    first = next(buffers(), None) if callable(buffers) else None
    with torch.no_grad():
        out = head.predict(x if first is None else x.to(first.device))
    return check_finite(out.float().to(x.device), head.kind)


def _candidate_scores_on_log(head: Any, summary: Mapping[str, Tensor], extra: Mapping[str, Tensor] | None) -> Tensor:
    """A token head's scores ``[N, 2K]`` on the LOG's candidate set; 0 outside the head's own set.

    A candidate's features do not depend on which list it came from, so scoring the log's (larger) set and
    zeroing tokens outside the head's top-``candidates`` lists reproduces the head's live estimate exactly.
    """
    spec: FeatureSpec = head.spec
    k = summary["q_topk_ids"].shape[-1]
    if spec.candidates > k or spec.k > k:
        raise ValueError(f"the head needs top-{spec.top_k} lists, these logs keep top-{k}")
    wide = FeatureSpec(kind="token", k=spec.k, candidates=k, hidden=spec.hidden, hidden_dims=spec.hidden_dims)
    n = summary["q_max"].shape[0]
    out = []
    for start in range(0, n, _CHUNK):
        part = {name: v[start : start + _CHUNK] for name, v in summary.items() if isinstance(v, Tensor)}
        ext = None if extra is None else {name: v[start : start + _CHUNK] for name, v in extra.items()}
        ids, x, valid = token_features(part, wide, ext)
        s = _predict(head, x)
        c = spec.candidates
        own = torch.cat([part["q_topk_ids"][:, :c], part["p_topk_ids"][:, :c]], dim=-1)  # [n, 2c]
        in_head = (ids.unsqueeze(-1) == own.unsqueeze(-2)).any(-1)
        out.append(torch.where(valid & in_head, s, 0.0))
    return torch.cat(out) if out else torch.zeros(0, 2 * k)


def head_estimates(head: Any, summary: Mapping[str, Tensor]) -> Tensor:
    """Cascade head: ``[N, 2]`` estimates; token head: ``[N, 2K]`` scores on the log's candidates."""
    extra = {h: summary[h] for h in head.spec.hidden} if head.spec.hidden else None
    if head.kind == "token":
        return _candidate_scores_on_log(head, summary, extra)
    outs = []
    n = summary["q_max"].shape[0]
    for start in range(0, n, _CHUNK):
        part = {name: v[start : start + _CHUNK] for name, v in summary.items() if isinstance(v, Tensor)}
        ext = None if extra is None else {h: v[start : start + _CHUNK] for h, v in extra.items()}
        outs.append(_predict(head, context_features(part, head.spec, ext)))
    return torch.cat(outs) if outs else torch.zeros(0, 2)


def _row(method: str, kind: str, alpha: float, loss: str, o: Outcome) -> dict[str, Any]:
    n = int(o.defer.shape[0])

    def mean(x: Tensor) -> float:
        return float(x.double().mean()) if n else math.nan

    return {
        "method": method, "kind": kind, "alpha": float(alpha), "loss": loss,
        "l_spec": mean(o.l_spec(alpha, loss)),
        "quality_loss": mean(o.loss_argmax if loss == "argmax" else o.loss_sampled),
        "deferral_rate": mean(o.defer), "rejection_rate": mean(o.rejection),
        "rejection_bound": mean(o.rejection_bound),
        "argmax_uncertain": mean(o.argmax_uncertain.double()) if loss == "argmax" else 0.0,
        "rows": n,
    }


def evaluate(
    summary: Mapping[str, Any],  # logged columns as tensors (specref.logs.read_logs / Logs.to_torch)
    alphas: Sequence[float],
    heads: Mapping[str, Any] | None = None,  # name -> DeferralHead with .spec and .predict (torch or sklearn)
    log_alphas: Sequence[float] = (),  # the log's exact token-rule alpha grid
    vocab_size: int | None = None,
    methods: Sequence[str] | None = None,  # subset of the baseline names (default: all)
    losses: Sequence[str] = ("argmax", "sampled"),
) -> list[dict[str, Any]]:
    """Rows of the evaluation table (see module docstring). Token baselines appear only at alphas of the
    log's grid (their exact values exist only there).

    Refused (ValueError): an unknown method, an alpha < 0 or not finite, a head named like a baseline, and a
    method asked for by name that yields no row (a token rule at alphas off the log's grid, or on logs
    without its columns): an empty or partial table never passes for a result."""
    if "reference" not in summary:
        raise ValueError("offline evaluation needs logs with a reference token")
    heads = dict(heads or {})
    alphas = check_alphas(alphas)
    registered = registered_methods()
    clash = [name for name in heads if name in BASELINES or name in registered]
    if clash:
        raise ValueError(f"a head may not be named {clash[0]!r}: it would replace that method's rows; "
                         f"name it NAME=PATH with a NAME not in {', '.join((*BASELINES, *registered))}")
    explicit = methods is not None
    wanted = set(check_methods(methods)) if methods is not None else set(BASELINES)
    # registered rules: the ones asked for by name (all of them, with their reasons, when one cannot run)
    extra = [m for m in registered if m in wanted]
    vocab = int(vocab_size or 0)
    rows: list[dict[str, Any]] = []
    estimates = {name: head_estimates(h, summary) for name, h in heads.items()}
    token_grid = {round(float(a), 9): i for i, a in enumerate(log_alphas)}
    for alpha in alphas:
        alpha = float(alpha)
        for method in (*CASCADE_BASELINES, *extra):
            if method in wanted:
                o = cascade_outcome(cascade_decisions(method, summary, alpha), summary)
                rows += [_row(method, "cascade", alpha, loss, o) for loss in losses]
        if "oracle" in wanted:
            for loss in losses:
                o = cascade_outcome(cascade_decisions("oracle", summary, alpha, loss=loss), summary)
                rows.append(_row("oracle", "cascade", alpha, loss, o))
        j = token_grid.get(round(alpha, 9))
        for rule in TOKEN_RULES:
            if rule in wanted and j is not None and f"{rule}_eta" in summary:
                o = token_outcome_exact(summary, rule, j)
                rows += [_row(rule, "token", alpha, loss, o) for loss in losses]
        for name, head in heads.items():
            est = estimates[name]
            if head.kind == "mixture":
                # the sampled loss and the rejection of (1 - w) q + w p are linear in w; its argmax loss is not
                # the mixture of the two models' (the mixture's argmax can be a third token): sampled rows only
                o = cascade_outcome(rules.mixture_weight(est, alpha), summary)
                rows += [_row(name, head.kind, alpha, loss, o) for loss in losses if loss == "sampled"]
                continue
            if head.kind == "cascade":
                o = cascade_outcome(cascade_decisions("learned", summary, alpha, estimates=est), summary)
            else:
                if not vocab:
                    raise ValueError("evaluating a token head needs the vocabulary size")
                valid = candidate_set(summary, summary["q_topk_ids"].shape[-1])[3]
                defer, tail = learned_token_decisions(est, valid, alpha)
                o = token_outcome_candidates(summary, defer, tail, vocab)
            rows += [_row(name, head.kind, alpha, loss, o) for loss in losses]
    if explicit:
        got = {r["method"] for r in rows}
        for rule in (m for m in TOKEN_RULES if m in wanted and m not in got):
            if f"{rule}_eta" not in summary:
                raise ValueError(f"{rule} needs the exact token-rule columns, which these logs lack "
                                 "(on-policy logs, or logged with no alpha grid)")
            raise ValueError(f"{rule} is exact only at the logs' alpha grid ({', '.join(f'{a:g}' for a in log_alphas)})"
                             f"; none of the alphas {', '.join(f'{a:g}' for a in alphas)} is on it")
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(FIELDS))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in FIELDS})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text.getvalue().encode("utf-8"))


def plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], loss: str = "sampled") -> Path:
    """Two panels for one loss: L_spec against alpha, and quality loss against rejection rate (the
    cost-quality trade-off each method traces as alpha varies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        pts = sorted((r for r in rows if r["method"] == method and r["loss"] == loss), key=lambda r: r["alpha"])
        if not pts:
            continue
        style = "--" if method == "oracle" else ".-"
        ax1.plot([r["alpha"] for r in pts], [r["l_spec"] for r in pts], style, label=method, markersize=4)
        ax2.plot([r["rejection_rate"] for r in pts], [r["quality_loss"] for r in pts], style, label=method,
                 markersize=4)
    ax1.set_xlabel("alpha")
    ax1.set_ylabel(f"L_spec ({loss} 0-1 loss)")
    ax2.set_xlabel("rejection rate")
    ax2.set_ylabel(f"{loss} 0-1 loss")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, buf.getvalue())
