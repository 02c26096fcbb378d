"""Learned deferral heads: plain ``nn.Module``s implementing :class:`specref.rules.DeferralHead`.

No Lightning here (training lives in ``training/deferral``); scikit-learn is imported only by the baseline
fitting functions. Typical use at decode time::

    head = specref.heads.load("runs/cascade/head")          # safetensors + JSON
    rule = specref.rules.get("learned", head=head, alpha=0.3)
"""

from __future__ import annotations

from specref.heads.baselines import MODELS, SklearnHead, fit_sklearn_head, training_arrays
from specref.heads.features import FeatureSpec, context_features, feature_names, live_summary, token_features
from specref.heads.io import HeadFormatError, load, read_config, save
from specref.heads.modules import (
    CascadeHead,
    Head,
    MixtureHead,
    MLPBody,
    Standardize,
    TokenHead,
    TreeBody,
    build_head,
)
from specref.heads.targets import cascade_targets, realized_losses, token_targets

__all__ = [
    "MODELS",
    "CascadeHead",
    "FeatureSpec",
    "Head",
    "HeadFormatError",
    "MLPBody",
    "MixtureHead",
    "SklearnHead",
    "Standardize",
    "TokenHead",
    "TreeBody",
    "build_head",
    "cascade_targets",
    "context_features",
    "feature_names",
    "fit_sklearn_head",
    "live_summary",
    "load",
    "read_config",
    "realized_losses",
    "save",
    "token_features",
    "token_targets",
    "training_arrays",
]
