"""Training of learned deferral heads (needs Lightning): data module over logs, LightningModule, CLI,
scikit-learn baselines and export to safetensors + JSON. See docs/learned_deferral.md.

The heads themselves live in :mod:`specref.heads` and import without Lightning.
"""
