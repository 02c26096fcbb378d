"""A rule defined only in the tests, registered the way a user's plugin module would: one class, one call.

``gap``: defer iff ``max q < alpha * max p`` (the draft is less sure than a fraction alpha of the target).
"""

from __future__ import annotations

from specref import rules


class GapRule(rules.Rule):
    """Defer iff ``max_v q(v) < alpha * max_v p(v)``."""

    name = "gap"
    takes_alpha = True

    def decide_position(self, stats):
        return stats.q_max < self.alpha * stats.p_max


rules.register("gap", GapRule, label="SpecCascade [Gap]", alpha_meaning="defer iff max q < alpha max p",
               quick=(0.5, 1.0), full=(0.0, 0.5, 1.0, 2.0))
