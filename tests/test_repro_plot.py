"""Cost-quality figures: curves in cost order with alphas labelled, family styles, error bars, metric names."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("matplotlib")

from specref.repro import methods as M  # noqa: E402
from specref.repro.plot import _STYLE, _draw, metric_name, plot_cost_quality, plot_settings  # noqa: E402
from specref.repro.summary import average_seeds, summarize  # noqa: E402


def _row(method, alpha, quality, lat, seed=0, options="", t=1.0, se=0.5):
    return {
        "task": "translation", "pair": "p", "method": method, "alpha": alpha, "options": options,
        "temperature": t, "gamma": 5, "top_p": None, "seed": seed, "split": "test", "n_examples": 100,
        "max_new_tokens": 8, "label": M.METHODS[method].label, "metric": "bleu", "quality": quality,
        "latency_model": lat, "latency_wall": 2 * lat, "rejection_rate": 0.1 * lat, "target_calls_per_token": lat,
        "quality_se": se, "n_boot": 1000, "noise_method": "bootstrap",
    }


def _rows(seeds=(0,)):
    rows = []
    for s in seeds:
        d = 0.3 * s
        rows += [_row("target", None, 20.0 + d, 1.0, s), _row("draft", None, 10.0 + d, 0.2, s),
                 _row("specdecode", None, 19.5 + d, 0.9, s),
                 # alphas deliberately out of cost order: the curve must be drawn by cost
                 _row("token_v3", 0.9, 14.0 + d, 0.4, s), _row("token_v3", 0.3, 21.0 + d, 0.8, s),
                 _row("token_v3", 0.6, 18.0 + d, 0.6, s), _row("chow", 0.5, 15.0 + d, 0.7, s),
                 _row("bild", 0.5, 16.0 + d, 0.8, s, options='{"rollback":2.0}'),
                 _row("bild", 0.5, 15.5 + d, 0.85, s, options='{"rollback":5.0}')]
    return rows


def _panel(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    (s,) = summarize(rows)
    _draw(ax, average_seeds(rows), "latency_model", s, None)
    return fig, ax, s


def _curve(ax, label):
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return container


def test_curve_in_cost_order_with_alpha_labels_and_metric_name():
    import matplotlib.pyplot as plt

    fig, ax, _ = _panel(_rows())
    line = _curve(ax, "SpecCascade [TokenV3]").lines[0]
    assert list(line.get_xdata()) == [0.4, 0.6, 0.8] and list(line.get_ydata()) == [14.0, 18.0, 21.0]
    texts = {t.get_text() for t in ax.texts}
    assert {"0.9", "0.6", "0.3", "0.5"} <= texts
    assert ax.get_ylabel() == "BLEU" and "modeled latency" in ax.get_xlabel()
    labels = ax.get_legend_handles_labels()[1]
    assert "BiLD (rollback 2.0)" in labels and "BiLD (rollback 5.0)" in labels  # one curve per option set
    plt.close(fig)
    assert metric_name("rouge2") == "ROUGE-2" and metric_name("accuracy") == "accuracy (%)"


def test_families_have_distinct_styles():
    token = {k for k in _STYLE if k.startswith("token_v")}
    cascades = {"chow", "diff", "opt"}
    assert len({_STYLE[k][0] for k in _STYLE}) == len(_STYLE)  # every method its own colour
    assert len({_STYLE[k] for k in token | cascades}) == len(token | cascades)
    # hue families: reds/oranges for Token, blues for Chow/Diff/OPT (red channel above / below blue)
    rgb = lambda h: tuple(int(h[i : i + 2], 16) for i in (1, 3, 5))  # noqa: E731
    assert all(rgb(_STYLE[k][0])[0] > rgb(_STYLE[k][0])[2] for k in token)
    assert all(rgb(_STYLE[k][0])[2] > rgb(_STYLE[k][0])[0] for k in cascades)
    assert set(M.METHODS) - {"target", "draft"} <= set(_STYLE)


def test_error_bars_over_seeds_and_bootstrap_and_the_noise_band():
    import matplotlib.pyplot as plt

    fig, ax, s = _panel(_rows(seeds=(0, 1, 2)))
    bars = _curve(ax, "SpecCascade [TokenV3]").lines[2][0].get_segments()
    half = [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars]
    assert half == pytest.approx([0.3 / math.sqrt(3)] * 3)  # SE of the seed mean: SD 0.3 over 3 seeds
    band = [p for p in ax.patches if p.get_alpha() and p.get_alpha() < 0.1]
    assert band and s.noise.method == "seeds"
    plt.close(fig)
    fig, ax, _ = _panel(_rows())
    bars = _curve(ax, "SpecCascade [TokenV3]").lines[2][0].get_segments()
    assert [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars] == pytest.approx([0.5] * 3)  # the bootstrap SE
    plt.close(fig)


def test_figures_are_written_and_titles_spell_out_top_p(tmp_path):
    from specref.repro.report import context_title

    (s,) = summarize(_rows())
    assert "no top-p" in context_title(s) and "top_p=-" not in context_title(s)
    path = plot_cost_quality(_rows(), tmp_path / "cost_quality.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows() + [dict(r, temperature=0.0) for r in _rows()]
    plot_settings(rows, tmp_path / "robustness_temperature.png", vary="temperature")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cost_quality.png", "robustness_temperature.png"]
