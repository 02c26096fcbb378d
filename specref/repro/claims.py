"""The paper's headline claims (THEORY.md section 8), checked mechanically against a sweep's rows.

Why mechanical: paper_repro.md puts our numbers beside the paper's claims, and a verdict computed by a
stated rule cannot drift towards the hoped-for answer. Every verdict reads Table-2 numbers
(:mod:`specref.repro.summary`) on one cost axis (modeled latency by default) and carries the noise it was
judged against: the target's noise band ``z * noise`` (``z = 2``; ``noise`` the standard error of a
difference from the target: seed-to-seed spread with >= 2 seeds, else a bootstrap over >= 30 examples).
Without that estimate a verdict reads "not judged: needs >= 2 seeds or >= 30 examples".

1. *SpecCascade [Token] gives the best trade-off*: TokenV3 has the highest speed-up at the target's quality
   (a) and the highest quality within the target's latency (b) among the paper's non-reference methods
   (:data:`CONTENDERS`; ties count as wins; specref's own ``learned`` rule is not a contender). Judged only
   when every contender was run ("not judged: needs ..." otherwise). Verdict: holds (both), partly (one),
   does not hold (neither); "(within noise)" is appended when TokenV3's (b) is within the band of the best
   other contender's, i.e. the ranking on (b) is not resolved by the data.
2. *Cascades can beat the target's quality*: some SpecCascade rule's (b) exceeds the target's quality by
   more than the band: holds; above the target but within the band: "not shown (within noise)"; at or
   below it: does not hold. (The best of many configurations is biased upwards, so a margin just beyond
   the band is weak evidence.)
3. *At T = 0 the gain over lossy SpecDecode vanishes*: gain = TokenV3's (b) minus SpecDecode [Lossy]'s (b),
   at T = 1 and at T = 0 (gamma and top-p of the main setting). Holds when the T = 1 gain exceeds its band
   and the T = 0 gain is at most a quarter of it or within the T = 0 band of zero; "not shown" when the
   T = 1 gain is within its band (no gain to vanish). Needs the temperature sweep.
4. *OPT vs Token*: OPT's (a) and (b) against TokenV3's. The paper found OPT competitive on T5 and weaker on
   Gemma; a verdict needs pairs of both families, so this row only reports the gaps (and the band).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from specref.repro.methods import DEFAULT_METHODS
from specref.repro.summary import MIN_BOOT_EXAMPLES, MethodSummary, Summary, summarize

__all__ = ["CONTENDERS", "Claim", "check_claims", "claims_markdown"]

#: The paper's speculative-cascade rules. ``learned`` (specref's own) is left out of every verdict so that
#: the claims are judged on the paper's methods only.
_CASCADES = ("chow", "diff", "opt", "token_v1", "token_v2", "token_v3")

#: The methods "the best trade-off" is judged among: the paper's Table-2 rows (the default methods less the
#: references). A verdict from a subset could crown a method that a missing one beats.
CONTENDERS: tuple[str, ...] = tuple(m for m in DEFAULT_METHODS if m not in ("target", "draft"))

_NOT_JUDGED = f"not judged: needs >= 2 seeds or >= {MIN_BOOT_EXAMPLES} examples"


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


def _speed(x: float) -> str:
    return "never" if x is None or math.isnan(x) else f"{x:.2f}x"


def _by_method(s: Summary) -> dict[str, MethodSummary]:
    return {m.method: m for m in s.methods}


def _match(rows: Sequence[Mapping[str, Any]], temperature: float, gamma: int, top_p: float | None) -> list:
    return [r for r in rows if r["temperature"] == temperature and r["gamma"] == gamma and r["top_p"] == top_p]


def _winners(s: Summary) -> tuple[list[str], list[str]]:
    methods = [m for m in s.methods if not m.method.startswith("learned")]  # learned and learned_NAME
    a = max((_nan_low(m.speedup) for m in methods), default=-math.inf)
    b = max((_nan_low(m.best_quality) for m in methods), default=-math.inf)
    wa = [m.method for m in methods if a > -math.inf and _nan_low(m.speedup) >= a - 1e-12]
    wb = [m.method for m in methods if b > -math.inf and _nan_low(m.best_quality) >= b - 1e-12]
    return wa, wb


def _noise(s: Summary) -> str:
    return s.noise.text(s.z)


def check_claims(
    rows: Sequence[Mapping[str, Any]],
    temperature: float = 1.0,
    gamma: int = 5,
    top_p: float | None = None,
    axis: str = "latency_model",
    tol: float | None = None,
    noise_rows: Sequence[Mapping[str, Any]] = (),
) -> list[Claim]:
    """Verdicts for the four claims on ``rows`` (one pair, one example subset) around the main setting.

    ``tol`` (an explicit ``--match-tol``) changes how (a) is read, as in the tables; the noise band still
    judges every quality comparison. ``noise_rows``: a several-seed run on the same examples
    (:func:`specref.repro.summary.summarize`).
    """
    main_rows = _match(rows, temperature, gamma, top_p)
    main = summarize(main_rows, axis=axis, tol=tol, noise_rows=noise_rows) if main_rows else []
    if len(main) != 1:
        missing = "no rows" if not main else f"{len(main)} settings (mixed subsets?)"
        return [Claim("all", "not measured", f"main setting T={temperature}, gamma={gamma}: {missing}")]
    s = main[0]
    by = _by_method(s)
    labels = {m.method: m.label for m in s.methods}
    band = s.noise.band(s.z) if s.noise.judged else math.nan
    out = [_token_best(s, by, labels, band)]

    cascades = [m for k, m in by.items() if k in _CASCADES and not math.isnan(m.best_quality)]
    top = max(cascades, key=lambda m: m.best_quality, default=None)
    claim = "Speculative cascades can beat the target's quality"
    if top is None:
        why = "no SpecCascade rows" if not any(k in _CASCADES for k in by) else "no cascade point within target latency"
        out.append(Claim(claim, "does not hold" if any(k in _CASCADES for k in by) else "not measured", why))
    else:
        numbers = (f"{top.label}: {_fmt(top.best_quality)} within target latency vs target "
                   f"{_fmt(s.target_quality)} ({top.best_delta:+.2f}); {_noise(s)}")
        if not s.noise.judged:
            verdict = _NOT_JUDGED
        elif top.best_delta > band:
            verdict = "holds"
        elif top.best_delta > 0:
            verdict = "not shown (within noise)"
        else:
            verdict = "does not hold"
        out.append(Claim(claim, verdict, numbers))

    out.append(_t0_gain(rows, gamma, top_p, axis, tol, noise_rows))

    claim = "OPT vs Token (paper: competitive on T5, weaker on Gemma)"
    if "opt" in by and "token_v3" in by:
        o, t3 = by["opt"], by["token_v3"]
        out.append(Claim(
            claim, "reported",
            f"speed-up at target quality OPT {_speed(o.speedup)} vs TokenV3 {_speed(t3.speedup)}; best quality "
            f"within target latency OPT {_fmt(o.best_quality)} vs TokenV3 {_fmt(t3.best_quality)}; {_noise(s)}",
        ))
    else:
        out.append(Claim(claim, "not measured", "needs OPT and TokenV3 rows"))
    return out


def _token_best(s: Summary, by: dict[str, MethodSummary], labels: dict[str, str], band: float) -> Claim:
    claim = "SpecCascade [Token] gives the best cost-quality trade-off"
    missing = [m for m in CONTENDERS if m not in by]
    if missing:
        return Claim(claim, "not judged: needs " + ", ".join(missing),
                     "the best of a subset is not the best: run every contender (the default --methods)")
    if not s.judged:
        return Claim(claim, _NOT_JUDGED, f"speed-up at the target's quality needs the noise band; {_noise(s)}")
    wa, wb = _winners(s)
    wins = ("token_v3" in wa) + ("token_v3" in wb)
    verdict = {2: "holds", 1: "partly", 0: "does not hold"}[wins]
    t3 = by["token_v3"]
    rivals = [m for k, m in by.items() if k != "token_v3" and k in CONTENDERS and not math.isnan(m.best_quality)]
    rival = max(rivals, key=lambda m: m.best_quality, default=None)
    lead = ""
    if rival is not None and not math.isnan(t3.best_quality):
        gap = t3.best_quality - rival.best_quality
        lead = f"; TokenV3 {_fmt(t3.best_quality)} vs best other {rival.label} {_fmt(rival.best_quality)} ({gap:+.2f})"
        if not math.isnan(band) and abs(gap) <= band:
            verdict += " (within noise)"
    return Claim(
        claim, verdict,
        f"best speed-up at target quality: {', '.join(labels[m] for m in wa) or 'none matches'}; "
        f"best quality within target latency: {', '.join(labels[m] for m in wb) or 'none'}{lead}; {_noise(s)}",
    )


def _t0_gain(rows: Sequence[Mapping[str, Any]], gamma: int, top_p: float | None, axis: str,
             tol: float | None, noise_rows: Sequence[Mapping[str, Any]]) -> Claim:
    claim = "At T = 0 the gain over lossy SpecDecode vanishes"
    gains: dict[float, tuple[float, Summary]] = {}
    for t in (1.0, 0.0):
        sub = _match(rows, t, gamma, top_p)
        summ = summarize(sub, axis=axis, tol=tol, noise_rows=noise_rows) if sub else []
        if len(summ) == 1:
            b = _by_method(summ[0])
            if "token_v3" in b and "lossy" in b:
                gains[t] = (b["token_v3"].best_quality - b["lossy"].best_quality, summ[0])
    if len(gains) < 2:
        return Claim(claim, "not measured", "needs TokenV3 and Lossy at T = 0 and T = 1 (run --sweep temperature)")
    (g1, s1), (g0, s0) = gains[1.0], gains[0.0]
    if math.isnan(g1) or math.isnan(g0):
        return Claim(claim, "not measurable",
                     "TokenV3 or Lossy has no point within the target's latency at T = 0 or T = 1")
    numbers = (f"TokenV3 minus Lossy, best quality within target latency: {g1:+.2f} at T = 1, {g0:+.2f} at T = 0; "
               f"T = 1 {_noise(s1)}; T = 0 {_noise(s0)}")
    if not (s1.noise.judged and s0.noise.judged):
        return Claim(claim, _NOT_JUDGED, numbers)
    b1, b0 = s1.noise.band(s1.z), s0.noise.band(s0.z)
    if g1 <= b1:
        verdict = "not shown (no gain beyond noise at T = 1)"
    elif g0 <= max(g1 / 4, b0):
        verdict = "holds"
    else:
        verdict = "does not hold"
    return Claim(claim, verdict, numbers)


def claims_markdown(claims: Sequence[Claim], title: str = "") -> str:
    """A Markdown table of the claims (rules in :mod:`specref.repro.claims`)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| paper's claim | our verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c.claim} | {c.verdict} | {c.evidence} |" for c in claims]
    return "\n".join(lines) + "\n"
