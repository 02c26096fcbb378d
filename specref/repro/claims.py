"""The paper's headline claims (THEORY.md section 8), checked mechanically against a sweep's rows.

Why mechanical: paper_repro.md puts our numbers beside the paper's claims, and a verdict computed by a
stated rule cannot drift towards the hoped-for answer. Every verdict reads Table-2 numbers
(:mod:`specref.repro.summary`) on one cost axis (modeled latency by default):

1. *SpecCascade [Token] gives the best trade-off*: TokenV3 has the highest speed-up at the target's quality
   (a) and the highest quality within the target's latency (b) among the paper's non-reference methods
   (ties count as wins; specref's own ``learned`` rule is not a contender). Verdict: holds (both), partly
   (one), does not hold (neither).
2. *Cascades can beat the target's quality*: some SpecCascade rule's (b) exceeds the target's quality.
   The evidence gives the margin beside the target's seed-to-seed standard deviation (when >= 2 seeds).
3. *At T = 0 the gain over lossy SpecDecode vanishes*: gain = TokenV3's (b) minus SpecDecode [Lossy]'s (b),
   at T = 1 and at T = 0 (gamma and top-p of the main setting). Holds when the T = 1 gain is positive and
   the T = 0 gain is at most a quarter of it. Needs the temperature sweep.
4. *OPT vs Token*: OPT's (a) and (b) against TokenV3's. The paper found OPT competitive on T5 and weaker on
   Gemma; a verdict needs pairs of both families, so this row only reports the gaps.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from specref.repro.summary import MethodSummary, Summary, summarize

__all__ = ["Claim", "check_claims", "claims_markdown"]

#: The paper's speculative-cascade rules. ``learned`` (specref's own) is left out of every verdict so that
#: the claims are judged on the paper's methods only.
_CASCADES = ("chow", "diff", "opt", "token_v1", "token_v2", "token_v3")


@dataclass(frozen=True)
class Claim:
    """One claim, our verdict by the rule in the module docstring, and the numbers behind it."""

    claim: str
    verdict: str
    evidence: str


def _nan_low(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


def _fmt(x: float, spec: str = ".2f") -> str:
    return "n/a" if x is None or math.isnan(x) else format(x, spec)


def _by_method(s: Summary) -> dict[str, MethodSummary]:
    return {m.method: m for m in s.methods}


def _match(rows: Sequence[Mapping[str, Any]], temperature: float, gamma: int, top_p: float | None) -> list:
    return [r for r in rows if r["temperature"] == temperature and r["gamma"] == gamma and r["top_p"] == top_p]


def _winners(s: Summary) -> tuple[list[str], list[str]]:
    methods = [m for m in s.methods if m.method != "learned"]
    a = max((_nan_low(m.speedup) for m in methods), default=-math.inf)
    b = max((_nan_low(m.best_quality) for m in methods), default=-math.inf)
    wa = [m.method for m in methods if a > -math.inf and _nan_low(m.speedup) >= a - 1e-12]
    wb = [m.method for m in methods if b > -math.inf and _nan_low(m.best_quality) >= b - 1e-12]
    return wa, wb


def check_claims(
    rows: Sequence[Mapping[str, Any]],
    temperature: float = 1.0,
    gamma: int = 5,
    top_p: float | None = None,
    axis: str = "latency_model",
) -> list[Claim]:
    """Verdicts for the four claims on ``rows`` (one pair, one example subset) around the main setting."""
    main_rows = _match(rows, temperature, gamma, top_p)
    main = summarize(main_rows, axis=axis) if main_rows else []
    if len(main) != 1:
        missing = "no rows" if not main else f"{len(main)} settings (mixed subsets?)"
        return [Claim("all", "not measured", f"main setting T={temperature}, gamma={gamma}: {missing}")]
    s = main[0]
    by = _by_method(s)
    labels = {m.method: m.label for m in s.methods}
    out = []

    wa, wb = _winners(s)
    wins = ("token_v3" in wa) + ("token_v3" in wb)
    verdict = {2: "holds", 1: "partly", 0: "does not hold"}[wins] if "token_v3" in by else "not measured"
    out.append(Claim(
        "SpecCascade [Token] gives the best cost-quality trade-off", verdict,
        f"best speed-up at target quality: {', '.join(labels[m] for m in wa) or 'none matches'}; "
        f"best quality within target latency: {', '.join(labels[m] for m in wb) or 'none'}",
    ))

    cascades = [m for k, m in by.items() if k in _CASCADES and not math.isnan(m.best_quality)]
    top = max(cascades, key=lambda m: m.best_quality, default=None)
    targets = [float(r["quality"]) for r in main_rows if r["method"] == "target"]
    sd = statistics.stdev(targets) if len(targets) >= 2 else math.nan
    if top is None:
        why = "no SpecCascade rows" if not any(k in _CASCADES for k in by) else "no cascade point within target latency"
        out.append(Claim("Speculative cascades can beat the target's quality",
                         "does not hold" if any(k in _CASCADES for k in by) else "not measured", why))
    else:
        out.append(Claim(
            "Speculative cascades can beat the target's quality",
            "holds" if top.best_delta > 0 else "does not hold",
            f"{top.label}: {_fmt(top.best_quality)} within target latency vs target {_fmt(s.target_quality)} "
            f"({top.best_delta:+.2f}; target seed-to-seed SD {_fmt(sd)} over {len(targets)} seed(s))",
        ))

    gains = {}
    for t in (1.0, 0.0):
        sub = _match(rows, t, gamma, top_p)
        summ = summarize(sub, axis=axis) if sub else []
        if len(summ) == 1:
            b = _by_method(summ[0])
            if "token_v3" in b and "lossy" in b:
                gains[t] = b["token_v3"].best_quality - b["lossy"].best_quality
    if len(gains) < 2:
        out.append(Claim("At T = 0 the gain over lossy SpecDecode vanishes", "not measured",
                         "needs TokenV3 and Lossy at T = 0 and T = 1 (run --sweep temperature)"))
    elif any(math.isnan(g) for g in gains.values()):
        out.append(Claim("At T = 0 the gain over lossy SpecDecode vanishes", "not measurable",
                         "TokenV3 or Lossy has no point within the target's latency at T = 0 or T = 1"))
    else:
        holds = gains[1.0] > 0 and gains[0.0] <= gains[1.0] / 4
        out.append(Claim(
            "At T = 0 the gain over lossy SpecDecode vanishes", "holds" if holds else "does not hold",
            f"TokenV3 minus Lossy, best quality within target latency: {gains[1.0]:+.2f} at T = 1, "
            f"{gains[0.0]:+.2f} at T = 0",
        ))

    if "opt" in by and "token_v3" in by:
        o, t3 = by["opt"], by["token_v3"]
        out.append(Claim(
            "OPT vs Token (paper: competitive on T5, weaker on Gemma)", "reported",
            f"speed-up at target quality OPT {_fmt(o.speedup)}x vs TokenV3 {_fmt(t3.speedup)}x; best quality "
            f"within target latency OPT {_fmt(o.best_quality)} vs TokenV3 {_fmt(t3.best_quality)}",
        ))
    else:
        out.append(Claim("OPT vs Token (paper: competitive on T5, weaker on Gemma)", "not measured",
                         "needs OPT and TokenV3 rows"))
    return out


def claims_markdown(claims: Sequence[Claim], title: str = "") -> str:
    """A Markdown table of the claims (rules in :mod:`specref.repro.claims`)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| paper's claim | our verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c.claim} | {c.verdict} | {c.evidence} |" for c in claims]
    return "\n".join(lines) + "\n"
