"""scikit-learn baselines behind the DeferralHead interface, and their export to plain torch heads.

:func:`fit_sklearn_head` fits logistic regression (``"logreg"``: StandardScaler + LogisticRegression) or
gradient boosting (``"gbt"``: GradientBoostingClassifier) on the same features and targets as the Lightning
heads, and returns a :class:`SklearnHead`: a DeferralHead whose estimators keep the sklearn API
(``fit``/``predict_proba``). ``SklearnHead.to_torch()`` converts it to a :class:`CascadeHead` or
:class:`TokenHead` with identical predictions, which :func:`specref.heads.save` exports to safetensors +
JSON like any head: logistic regression becomes a linear body (scaler folded into the standardiser),
gradient boosting a :class:`TreeBody` holding every tree as node arrays. Both are therefore deployable in
the decoder without sklearn and without pickle. Soft targets (sampled loss, ``truth="target"``) are fitted
exactly by the usual trick: each row appears with label 1 and weight t, and with label 0 and weight 1 - t.
scikit-learn is imported lazily, only by the functions that need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from specref.heads.features import FeatureSpec, context_features, live_summary, token_features
from specref.heads.modules import CascadeHead, Head, MLPBody, TokenHead, TreeBody, check_finite
from specref.heads.targets import cascade_targets, token_targets

__all__ = ["MODELS", "SklearnHead", "fit_sklearn_head", "training_arrays"]

MODELS = ("logreg", "gbt")


class _Constant:
    """A classifier for a target that never varies in training (sklearn refuses one-class fits)."""

    def __init__(self, prob: float) -> None:
        self.prob = float(prob)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile([1.0 - self.prob, self.prob], (len(x), 1))


def training_arrays(
    summary: Mapping[str, Tensor],
    spec: FeatureSpec,
    loss: str = "argmax",
    truth: str = "reference",
) -> tuple[Tensor, Tensor]:
    """Flat features ``[R, F]`` and targets ``[R, O]`` (O = 2 cascade, 1 token; token rows = valid candidates)."""
    if spec.kind == "mixture":
        raise ValueError("scikit-learn baselines fit cascade and token heads; a mixture head trains with the "
                         "Lightning module (its objective is not a classification loss)")
    if spec.kind == "cascade":
        return context_features(summary, spec), cascade_targets(summary, loss, truth)
    _, x, valid = token_features(summary, spec)
    y, _ = token_targets(summary, spec.candidates, truth)
    return x[valid], y[valid].unsqueeze(-1)


class SklearnHead:
    """A DeferralHead over fitted sklearn classifiers: one per output (cascade: loss_q, loss_p; token: 1)."""

    def __init__(
        self,
        spec: FeatureSpec,
        estimators: Sequence[Any],
        model: str,
        scaler: Any | None = None,
        target: str = "argmax",
    ) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.estimators = list(estimators)
        self.model = model
        self.scaler = scaler
        self.target = target if spec.kind == "cascade" else "correct"

    def __repr__(self) -> str:
        return f"SklearnHead(kind={self.kind!r}, model={self.model!r})"

    @property
    def wants_hidden(self) -> bool:
        return bool(self.spec.hidden)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """sklearn-style: ``[R, F]`` features -> ``[R, O]`` probabilities."""
        x = np.asarray(x, dtype=np.float32)
        if self.scaler is not None:
            x = self.scaler.transform(x.astype(np.float64))
        return np.stack([est.predict_proba(x)[:, 1] for est in self.estimators], axis=-1)

    def predict(self, x: Tensor) -> Tensor:
        """Like :meth:`Head.predict`: cascade ``[..., F] -> [..., 2]``, token ``[..., M, F] -> [..., M]``."""
        flat = x.reshape(-1, x.shape[-1]).detach().cpu().numpy()
        probs = torch.from_numpy(self.predict_proba(flat)).float().to(x.device)
        if self.kind == "cascade":
            return probs.view(*x.shape[:-1], 2)
        return probs.view(x.shape[:-1])

    def estimate(self, q_rule: Tensor, p_rule: Tensor, q=None, p=None, features=None) -> Tensor:
        summary = live_summary(self.spec, q_rule, p_rule)
        if self.kind == "cascade":
            return check_finite(self.predict(context_features(summary, self.spec, features)), self.kind)
        ids, x, valid = token_features(summary, self.spec, features)
        scores = check_finite(torch.where(valid, self.predict(x), 0.0), self.kind)
        out = torch.zeros(q_rule.shape, dtype=scores.dtype, device=q_rule.device)
        return out.scatter_reduce(-1, ids, scores, reduce="amax")

    # -- export ------------------------------------------------------------------------------------------
    def to_torch(self) -> Head:
        """An equivalent plain-torch head (exportable with :func:`specref.heads.save`)."""
        cls = CascadeHead if self.kind == "cascade" else TokenHead
        info = {"trained_with": f"scikit-learn {self.model}"}
        if self.model == "logreg":
            body = MLPBody(self.spec.dim, len(self.estimators), hidden=())
            linear = body.net[-1]
            with torch.no_grad():
                for o, est in enumerate(self.estimators):
                    if isinstance(est, _Constant):
                        linear.weight[o].zero_()
                        linear.bias[o] = _logit(est.prob)
                    else:
                        linear.weight[o] = torch.from_numpy(est.coef_[0]).float()
                        linear.bias[o] = float(est.intercept_[0])
            head = cls(self.spec, body=body, target=self.target, info=info)
            with torch.no_grad():
                head.scaler.mean.copy_(torch.from_numpy(self.scaler.mean_).float())
                head.scaler.scale.copy_(torch.from_numpy(self.scaler.scale_).float())
            return head.eval()
        return cls(self.spec, body=_tree_body(self.spec.dim, self.estimators), target=self.target, info=info).eval()


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


def _tree_body(in_dim: int, estimators: Sequence[Any]) -> TreeBody:
    """Copy fitted binary GradientBoostingClassifiers into node arrays."""
    trees = [[t[0].tree_ for t in est.estimators_] if not isinstance(est, _Constant) else [] for est in estimators]
    n_trees = max(1, max(len(t) for t in trees))
    n_nodes = max(1, max((tr.node_count for ts in trees for tr in ts), default=1))
    depth = max((tr.max_depth for ts in trees for tr in ts), default=0)
    body = TreeBody(in_dim, len(estimators), n_trees, n_nodes, depth)
    probe = np.zeros((1, in_dim), dtype=np.float32)
    with torch.no_grad():
        for o, (est, ts) in enumerate(zip(estimators, trees)):
            if isinstance(est, _Constant):
                body.init[o] = _logit(est.prob)
                continue
            lr = float(est.learning_rate)
            body.scale[o] = lr
            # The initial raw score (the prior's log-odds) via public API: decision minus the trees' share.
            tree_sum = sum(float(t[0].predict(probe)[0]) for t in est.estimators_)
            body.init[o] = float(est.decision_function(probe)[0]) - lr * tree_sum
            for i, tr in enumerate(ts):
                n = tr.node_count
                body.feature[o, i, :n] = torch.from_numpy(np.maximum(tr.feature, 0).astype(np.int64))
                body.threshold[o, i, :n] = torch.from_numpy(tr.threshold.astype(np.float64))
                body.left[o, i, :n] = torch.from_numpy(tr.children_left.astype(np.int64))
                body.right[o, i, :n] = torch.from_numpy(tr.children_right.astype(np.int64))
                body.value[o, i, :n] = torch.from_numpy(tr.value.reshape(n, -1)[:, 0].astype(np.float64))
    return body


def _fit_binary(x: np.ndarray, y: np.ndarray, make: Any) -> Any:
    """Fit one classifier on targets in [0, 1] (soft targets as weighted label-1 and label-0 copies)."""
    if np.all(y == y[0]) and y[0] in (0.0, 1.0):
        return _Constant(float(y[0]))
    if np.all((y == 0) | (y == 1)):
        return make().fit(x, y.astype(np.int64))
    xx = np.concatenate([x, x])
    yy = np.concatenate([np.ones(len(y), np.int64), np.zeros(len(y), np.int64)])
    return make().fit(xx, yy, sample_weight=np.concatenate([y, 1 - y]))


def fit_sklearn_head(
    summary: Mapping[str, Tensor],
    spec: FeatureSpec,
    model: str = "logreg",
    loss: str = "argmax",
    truth: str = "reference",
    max_rows: int | None = None,
    seed: int = 0,
    **params: Any,
) -> SklearnHead:
    """Fit a baseline on a summary (e.g. ``specref.logs.read_logs(dir)``); ``params`` go to the estimator.

    ``max_rows`` subsamples training rows (gradient boosting is slow on millions of candidate rows).
    """
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    x_t, y_t = training_arrays(summary, spec, loss, truth)
    x, y = x_t.numpy().astype(np.float32), y_t.numpy().astype(np.float64)
    if len(x) == 0:
        raise ValueError("no training rows")
    if max_rows is not None and len(x) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), size=max_rows, replace=False))
        x, y = x[keep], y[keep]
    scaler = None
    if model == "logreg":
        scaler = StandardScaler().fit(x.astype(np.float64))
        x_fit: np.ndarray = scaler.transform(x.astype(np.float64))
        opts = {"C": 1.0, "max_iter": 2000, **params}

        def make() -> Any:
            return LogisticRegression(**opts)
    else:
        x_fit = x
        opts = {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.1, "random_state": seed, **params}

        def make() -> Any:
            return GradientBoostingClassifier(**opts)

    estimators = [_fit_binary(x_fit, y[:, o], make) for o in range(y.shape[1])]
    return SklearnHead(spec, estimators, model, scaler=scaler, target=loss)
