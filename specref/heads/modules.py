"""Deferral heads as plain ``nn.Module``s implementing :class:`specref.rules.DeferralHead`.

A head is: a :class:`~specref.heads.features.FeatureSpec` (what it reads), a standardiser (fitted on the
training features), and a body producing logits (an MLP, which with no hidden layer is logistic regression,
or an ensemble of regression trees exported from gradient boosting). ``predict`` maps features to
probabilities; ``estimate`` is the decode-time entry point the learned rule calls on live distributions.

* :class:`CascadeHead` (``kind="cascade"``): ``[..., 2]`` estimated expected 0-1 losses of keeping the
  draft and of deferring; the learned rule defers iff ``loss_q > loss_p + alpha * TV(p, q)`` (Lemma 4).
* :class:`TokenHead` (``kind="token"``): ``[..., V]`` estimated probability that each candidate token is
  the right one; 0 outside the candidate set. The rule defers v iff ``score(v) < max score - alpha``.
* :class:`MixtureHead` (``kind="mixture"``): ``[..., 2]`` logits ``(a, b)`` of a weight on the target; the
  rule mixes ``pi = (1 - w) q + w p`` with ``w = sigmoid(a - softplus(b) alpha)``
  (:func:`specref.rules.mixture_weight`), alpha the price of a rejection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from specref.heads.features import FeatureSpec, context_features, live_summary, token_features

__all__ = [
    "BODIES", "CascadeHead", "Head", "MLPBody", "MixtureHead", "Standardize", "TokenHead", "TreeBody", "build_head",
    "check_finite",
]

BODIES = ("mlp", "trees")
_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def check_finite(estimates: Tensor, kind: str) -> Tensor:  # [..., 2] or [..., V]
    """``estimates`` unchanged, or a ValueError if any is NaN/inf.

    A NaN estimate makes every comparison of the learned rule false, so the rule would silently never defer
    (decode as the draft alone). Weights are checked on load; this catches non-finite inputs (hidden states,
    a broken model's distributions) at decode time. On an accelerator the check would cost a host sync per
    call inside the decoder's round, which promises one sync per round, so there it is skipped: finite
    weights are proven on load, and the models' logits are checked by the decoder every round.
    """
    if estimates.device.type != "cpu":
        return estimates
    if not bool(torch.isfinite(estimates).all()):
        bad = int((~torch.isfinite(estimates)).sum())
        raise ValueError(f"the {kind} deferral head produced {bad} non-finite estimates (NaN/inf) of "
                         f"{estimates.numel()}: its inputs or weights are broken, so no deferral decision can "
                         "be made from them")
    return estimates


class Standardize(nn.Module):
    """``(x - mean) / scale`` with buffers fitted on training features (part of the exported head)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> Standardize:  # x: [N, F]
        x = x.reshape(-1, x.shape[-1]).double()
        self.mean.copy_(x.mean(0).to(self.mean.dtype))
        # Constant features (e.g. a flag never set in training) keep scale 1 instead of dividing by 0.
        std = x.std(0, unbiased=False)
        self.scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)).to(self.scale.dtype))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.scale


class MLPBody(nn.Module):
    """Feed-forward logits; ``hidden=()`` is a linear model (logistic regression after the sigmoid)."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden: Sequence[int] = (), activation: str = "gelu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(_ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, int(h)), _ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.config = {
            "type": "mlp", "in_dim": in_dim, "out_dim": out_dim, "hidden": [int(h) for h in hidden],
            "activation": activation, "dropout": float(dropout),
        }

    def forward(self, x: Tensor) -> Tensor:  # [..., F] -> [..., O]
        return self.net(x)


class TreeBody(nn.Module):
    """Sums of regression trees, one ensemble per output: ``logit_o = init_o + scale_o * sum_t tree_ot(x)``.

    Trees are stored as padded node arrays ``[O, T, N]`` (sklearn's layout: ``left < 0`` marks a leaf; go
    left iff ``x[feature] <= threshold``) and evaluated by ``depth`` vectorised descent steps. Features are
    compared as float32 values against float64 thresholds, exactly as scikit-learn's trees do.
    """

    def __init__(self, in_dim: int, out_dim: int, trees: int, nodes: int, depth: int) -> None:
        super().__init__()
        shape = (out_dim, trees, nodes)
        self.register_buffer("feature", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("threshold", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("left", torch.full(shape, -1, dtype=torch.long))
        self.register_buffer("right", torch.full(shape, -1, dtype=torch.long))
        self.register_buffer("value", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("init", torch.zeros(out_dim, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(out_dim, dtype=torch.float64))
        self.depth = int(depth)
        self.config = {
            "type": "trees", "in_dim": in_dim, "out_dim": out_dim, "trees": trees, "nodes": nodes, "depth": depth,
        }

    def forward(self, x: Tensor) -> Tensor:  # [..., F] -> [..., O]
        lead = x.shape[:-1]
        xs = x.reshape(-1, x.shape[-1]).float().double()  # [B, F]
        o, t, n = self.feature.shape
        b = xs.shape[0]
        base = (torch.arange(o * t, device=x.device) * n).view(1, o, t)
        node = torch.zeros((b, o, t), dtype=torch.long, device=x.device)
        feat_f, thr_f = self.feature.reshape(-1), self.threshold.reshape(-1)
        left_f, right_f = self.left.reshape(-1), self.right.reshape(-1)
        for _ in range(self.depth):
            flat = base + node
            left = left_f[flat]
            xv = xs.gather(1, feat_f[flat].clamp_min(0).view(b, -1)).view(b, o, t)
            child = torch.where(xv <= thr_f[flat], left, right_f[flat])
            node = torch.where(left < 0, node, child)
        leaves = self.value.reshape(-1)[base + node]  # [B, O, T]
        logits = self.init + self.scale * leaves.sum(-1)
        return logits.to(torch.float32).view(*lead, o)


def build_body(config: Mapping[str, Any]) -> nn.Module:
    kind = config.get("type")
    if kind == "mlp":
        return MLPBody(
            int(config["in_dim"]), int(config["out_dim"]), tuple(config.get("hidden", ())),
            str(config.get("activation", "gelu")), float(config.get("dropout", 0.0)),
        )
    if kind == "trees":
        return TreeBody(
            int(config["in_dim"]), int(config["out_dim"]), int(config["trees"]), int(config["nodes"]),
            int(config["depth"]),
        )
    raise ValueError(f"unknown head body type {kind!r}; choose one of {BODIES}")


class Head(nn.Module):
    """Shared plumbing: features -> standardise -> body -> sigmoid."""

    kind: str = ""
    out_dim: int = 1

    def __init__(
        self,
        spec: FeatureSpec,
        body: nn.Module | Mapping[str, Any] | None = None,
        target: str = "argmax",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if spec.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a {self.kind!r} feature spec, got {spec.kind!r}")
        self.spec = spec
        self.target = target
        self.info = dict(info or {})
        self.scaler = Standardize(spec.dim)
        if body is None:
            body = {"type": "mlp", "hidden": [], "in_dim": spec.dim, "out_dim": self.out_dim}
        self.body = build_body(body) if isinstance(body, Mapping) else body
        cfg = self.body.config
        if cfg["in_dim"] != spec.dim or cfg["out_dim"] != self.out_dim:
            raise ValueError(
                f"body maps {cfg['in_dim']} -> {cfg['out_dim']}, the head needs {spec.dim} -> {self.out_dim}"
            )

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description from which :func:`build_head` rebuilds the module."""
        return {
            "kind": self.kind, "features": self.spec.to_json(), "body": dict(self.body.config),
            "target": self.target, "info": self.info,
        }

    def logits(self, x: Tensor) -> Tensor:
        return self.body(self.scaler(x))

    def predict(self, x: Tensor) -> Tensor:
        """Probabilities from precomputed features (see subclasses for shapes)."""
        return torch.sigmoid(self.logits(x))

    @property
    def wants_hidden(self) -> bool:
        """True when the head reads hidden states: the decoder then passes them in ``features``."""
        return bool(self.spec.hidden)

    def _param_device(self) -> torch.device:
        return self.scaler.mean.device


class CascadeHead(Head):
    """Estimates ``(E_P[l(q)], E_P[l(p)])`` per position; ``target`` is the loss (``argmax``/``sampled``)."""

    kind = "cascade"
    out_dim = 2

    def features(self, summary: Mapping[str, Tensor], extra: Mapping[str, Tensor] | None = None) -> Tensor:
        return context_features(summary, self.spec, extra)  # [..., F]

    def predict(self, x: Tensor) -> Tensor:  # [..., F] -> [..., 2]
        return super().predict(x)

    @torch.no_grad()
    def estimate(
        self,
        q_rule: Tensor,  # [..., V] untempered draft distribution
        p_rule: Tensor,  # [..., V] untempered target distribution
        q: Tensor | None = None,  # [..., V] tempered pair: unused, the rule prices TV on it
        p: Tensor | None = None,
        features: Mapping[str, Tensor] | None = None,  # hidden states [..., H] if the head reads them
    ) -> Tensor:  # [..., 2]
        summary = live_summary(self.spec, q_rule, p_rule)
        x = self.features(summary, features).to(self._param_device())
        return check_finite(self.predict(x).to(q_rule.device), self.kind)


class MixtureHead(CascadeHead):
    """Logits ``(a, b)`` of a mixture weight on the target at every price alpha; ``target`` is ``"loglik"``.

    The same position features as a cascade head. Trained (``training.deferral``, objective ``loglik``) to
    maximise ``log pi(y) - alpha * w * TV(p, q)`` over prices alpha drawn with each row, so one head serves
    the whole curve; :func:`specref.rules.mixture_weight` turns the logits into the weight.
    """

    kind = "mixture"
    out_dim = 2

    def __init__(self, spec: FeatureSpec, body=None, target: str = "loglik", info=None) -> None:
        super().__init__(spec, body, target, info)

    def predict(self, x: Tensor) -> Tensor:  # [..., F] -> [..., 2] logits (a, b), not probabilities
        return self.logits(x)


class TokenHead(Head):
    """Estimates ``P(y = v)`` for each candidate token v; ``target`` is ``"correct"``."""

    kind = "token"
    out_dim = 1

    def __init__(self, spec: FeatureSpec, body=None, target: str = "correct", info=None) -> None:
        super().__init__(spec, body, target, info)

    def predict(self, x: Tensor) -> Tensor:  # [..., M, F] -> [..., M]
        return super().predict(x).squeeze(-1)

    def candidate_scores(
        self, summary: Mapping[str, Tensor], extra: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(ids ``[..., M]``, scores ``[..., M]``, valid ``[..., M]``) on the candidate set."""
        ids, x, valid = token_features(summary, self.spec, extra)
        return ids, self.predict(x.to(self._param_device())).to(ids.device), valid

    @torch.no_grad()
    def estimate(
        self,
        q_rule: Tensor,  # [..., V] untempered draft distribution
        p_rule: Tensor,  # [..., V] untempered target distribution
        q: Tensor | None = None,
        p: Tensor | None = None,
        features: Mapping[str, Tensor] | None = None,
    ) -> Tensor:  # [..., V]
        summary = live_summary(self.spec, q_rule, p_rule)
        ids, scores, valid = self.candidate_scores(summary, features)
        out = torch.zeros(q_rule.shape, dtype=scores.dtype, device=q_rule.device)
        # Checked before the scatter, which could hide a NaN behind its twin's score on a duplicate id.
        masked = check_finite(torch.where(valid, scores, 0.0), self.kind)
        # A masked duplicate scatters 0 onto its twin's id; amax keeps the twin's score. In place: the
        # out-of-place form would first copy the [..., V] zeros.
        return out.scatter_reduce_(-1, ids, masked, reduce="amax")


_HEADS = {"cascade": CascadeHead, "token": TokenHead, "mixture": MixtureHead}


def build_head(config: Mapping[str, Any]) -> Head:
    """Rebuild an (untrained) head from :meth:`Head.config`; weights are loaded separately."""
    kind = config.get("kind")
    if kind not in _HEADS:
        raise ValueError(f"unknown head kind {kind!r}; choose one of {list(_HEADS)}")
    spec = FeatureSpec.from_json(config["features"])
    cls = _HEADS[kind]
    return cls(spec, body=dict(config["body"]), target=str(config["target"]), info=config.get("info", {}))
