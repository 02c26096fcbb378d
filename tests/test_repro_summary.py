"""Table 2 respects noise: the noise band on hand-made curves, the per-point bootstrap, the old CSV layout.

No models: every row is written by hand (or by a fake backend), so each test states the numbers it expects.
"""

from __future__ import annotations

import csv
import math

import pytest

from specref.repro import methods as M
from specref.repro.report import format_summaries, markdown_summaries, write_summary_csv
from specref.repro.runner import bootstrap_se, paired_bootstrap_se
from specref.repro.store import COLUMNS, LEGACY_LAYOUTS, PointStore
from specref.repro.summary import MIN_BOOT_EXAMPLES, Z, summarize, target_noise


def _row(method, alpha, quality, lat, seed=0, n=100, se=None, **extra):
    row = {
        "task": "t", "pair": "p", "method": method, "alpha": alpha, "options": "", "temperature": 1.0,
        "gamma": 5, "top_p": None, "seed": seed, "split": "test", "n_examples": n, "max_new_tokens": 8,
        "label": M.METHODS[method].label, "metric": "bleu", "quality": quality, "latency_model": lat,
        "latency_wall": lat, "rejection_rate": math.nan, "target_calls_per_token": lat,
        "quality_se": math.nan if se is None else se, "n_boot": None if se is None else 1000,
        "noise_method": "" if se is None else "bootstrap",
    }
    row.update(extra)
    return row


def _curve(y_spec, se=1.0, n=100):
    """Target 20 +/- se (bootstrap), a draft, SpecDecode at y_spec, and a TokenV3 curve."""
    return [
        _row("target", None, 20.0, 1.0, se=se, n=n), _row("draft", None, 10.0, 0.2, se=se, n=n),
        _row("specdecode", None, y_spec, 0.6, se=se, n=n),
        _row("token_v3", 0.9, 12.0, 0.3, se=se, n=n), _row("token_v3", 0.5, 19.0, 0.5, se=se, n=n),
    ]


def _by(s):
    return {m.method: m for m in s.methods}


# ---- the band rule on hand-made curves ------------------------------------------------------------------


def test_one_seed_band_is_z_sqrt2_bootstrap_se_and_decides_just_inside_or_outside():
    band = Z * math.sqrt(2) * 1.0  # one seed: noise = sqrt(2) x the target's bootstrap SE
    (inside,) = summarize(_curve(20.0 - band + 1e-6))
    assert inside.match_rule == "noise" and inside.noise.method == "bootstrap"
    assert inside.noise.se == pytest.approx(math.sqrt(2)) and inside.match_level == pytest.approx(20 - band)
    assert _by(inside)["specdecode"].speedup == pytest.approx(1 / 0.6)  # within noise: it matches
    (outside,) = summarize(_curve(20.0 - band - 1e-6))
    assert math.isnan(_by(outside)["specdecode"].cost_at_match)  # just outside: a loss beyond noise
    # the TokenV3 curve reaches the level by interpolation: 12 at 0.3 -> 19 at 0.5
    level = 20 - band
    assert _by(inside)["token_v3"].cost_at_match == pytest.approx(0.3 + (level - 12) / 7 * 0.2)


def test_one_seed_band_prefers_specdecodes_paired_bootstrap():
    rows = _curve(18.0)
    for r in rows:
        r["quality_diff_se"] = 1.2 if r["method"] == "specdecode" else 3.0
    (s,) = summarize(rows)
    assert s.noise.method == "paired bootstrap" and s.noise.se == 1.2
    assert s.match_level == pytest.approx(20 - Z * 1.2) and "SpecDecode minus target" in s.noise.detail
    assert _by(s)["specdecode"].speedup == pytest.approx(1 / 0.6)  # 2.0 below: within 2.4
    rows = [dict(r, quality_diff_se=1.2 if r["method"] == "specdecode" else 0.0, n_examples=20) for r in rows]
    assert summarize(rows)[0].match_rule == "not judged"  # too few examples for either bootstrap


def test_negative_control_tolerance_zero_calls_lossless_specdecode_a_loss():
    rows = _curve(19.0)  # one BLEU below the target: well within a 2.8-point band
    (band,) = summarize(rows)
    assert _by(band)["specdecode"].speedup == pytest.approx(1 / 0.6)
    (tol0,) = summarize(rows, tol=0.0)  # the old rule: strict equality with one noisy number
    assert tol0.match_rule == "tol" and math.isnan(_by(tol0)["specdecode"].cost_at_match)
    assert "never" in format_summaries({"latency_model": [tol0]}).splitlines()[3]
    # an explicit tolerance is honoured as given, and the table says the band was not used
    wide = [dict(r, quality_se=5.0) for r in rows]  # a band so wide that the draft's 10 is inside it
    assert "the draft's own 10.00 is within the band" in markdown_summaries({"latency_model": summarize(wide)})
    assert "the draft's own" not in markdown_summaries({"latency_model": [band]})
    (tol2,) = summarize(rows, tol=1.0)
    assert tol2.match_level == 19.0 and _by(tol2)["specdecode"].speedup == pytest.approx(1 / 0.6)
    assert "given explicitly" in markdown_summaries({"latency_model": [tol2]})


def test_several_seeds_band_uses_the_targets_seed_spread():
    rows = []
    for seed, (yt, ys) in enumerate([(19.0, 18.0), (21.0, 19.0), (20.0, 18.5)]):
        # bootstrap SEs are present but ignored: seeds measure decoding noise directly
        rows += [_row("target", None, yt, 1.0, seed=seed, se=9.0), _row("specdecode", None, ys, 0.6, seed=seed, se=9.0)]
    (s,) = summarize(rows)
    # both sample the target's law: SDs 1.0 (19, 21, 20) and 0.5 (18, 19, 18.5) pooled, variances averaged
    sd = math.sqrt((1.0 + 0.25) / 2)
    assert s.seeds == 3 and s.noise.method == "seeds"
    assert s.noise.se == pytest.approx(sd * math.sqrt(2 / 3))
    assert s.match_level == pytest.approx(20 - Z * sd * math.sqrt(2 / 3))  # 18.71: SpecDecode's 18.5 does not
    assert math.isnan(_by(s)["specdecode"].cost_at_match)
    assert "pooled over target (1.00) and SpecDecode (0.50), 3 seeds" in s.noise.detail
    (alone,) = summarize([r for r in rows if r["method"] == "target"] + [
        dict(r, seed=r["seed"] + 10) for r in rows if r["method"] == "specdecode"])  # other seeds: no pooling
    assert alone.noise.se == pytest.approx(1.0 * math.sqrt(2 / 3))
    assert "target SD 1.00 over 3 seeds" in alone.noise.detail
    # a wider spread makes the same seed-mean gap noise
    wide = [dict(r, quality=20.0 + 2.0 * (r["seed"] - 1)) if r["method"] == "target" else r for r in rows]
    (w,) = summarize(wide)
    assert _by(w)["specdecode"].speedup == pytest.approx(1 / 0.6)


def test_one_seed_table_borrows_a_noise_runs_seed_spread():
    rows = _curve(19.0, se=None)  # old rows: no bootstrap, so alone they are not judged
    noise = []
    for seed, (yt, ys) in enumerate([(20.0, 19.5), (20.4, 19.8), (19.6, 20.1)]):
        noise += [_row("target", None, yt, 1.0, seed=seed), _row("specdecode", None, ys, 0.6, seed=seed)]
    (s,) = summarize(rows, noise_rows=noise)
    sd = math.sqrt((0.4**2 + 0.3**2) / 2)
    assert s.noise.method == "seeds" and s.noise.se == pytest.approx(sd * math.sqrt(2))
    assert "of the noise run on the same examples" in s.noise.detail
    other = [dict(r, n_examples=50) for r in noise]  # another subset: not borrowed
    assert summarize(rows, noise_rows=other)[0].match_rule == "not judged"


def test_not_judged_with_one_seed_and_few_examples_or_rows_without_noise():
    few = _curve(20.0, n=MIN_BOOT_EXAMPLES - 1)
    (s,) = summarize(few)
    assert s.match_rule == "not judged" and not s.judged
    assert all(math.isnan(m.cost_at_match) for m in s.methods)
    assert not math.isnan(_by(s)["token_v3"].best_quality)  # (b) needs no band and stays reported
    assert f">= {MIN_BOOT_EXAMPLES} examples" in s.noise.detail and "1 seed" in s.noise.detail
    table = format_summaries({"latency_model": [s]})
    assert "not judged" in table.splitlines()[3] and "'to match' not judged" in table
    old = _curve(20.0, se=None)  # rows written before quality_se existed
    (o,) = summarize(old)
    assert o.match_rule == "not judged" and "re-decode" in o.noise.detail
    # an explicit tolerance still reads (a) without a noise estimate
    (t,) = summarize(old, tol=0.5)
    assert t.judged and not math.isnan(_by(t)["specdecode"].cost_at_match)
    assert target_noise([]).judged is False


def test_summary_rejects_bad_band_parameters():
    with pytest.raises(ValueError, match="tol must be >= 0"):
        summarize(_curve(20.0), tol=-1.0)
    with pytest.raises(ValueError, match="z must be > 0"):
        summarize(_curve(20.0), z=0.0)


def test_step_costs_explain_wall_clock_against_modeled():
    extra = {"cost_ratio": 0.25, "cost_ratio_source": "params", "cost_ratio_measured": 0.4,
             "baseline_wall_s": 10.0, "baseline_target_calls": 100.0, "device": "cpu"}
    rows = [_row(m, a, q, lat, se=1.0, **extra) for m, a, q, lat in
            (("target", None, 20.0, 1.0), ("draft", None, 10.0, 0.25))]
    # SpecDecode: 50 verification calls, 250 draft steps, 20 s: 250 x 0.04 s drafts, so 10 s / 50 = 0.2 s
    # per verification call = 2 target-only steps of 0.1 s
    rows.append(_row("specdecode", None, 20.0, 0.5 + 0.25 * 2.5, se=1.0, wall_s=20.0, target_calls=50.0,
                     draft_calls=250.0, **extra))
    (s,) = summarize(rows)
    assert s.costs.c == 0.25 and s.costs.c_measured == pytest.approx(0.4)
    assert s.costs.verify_measured == pytest.approx(2.0)
    text = markdown_summaries({"latency_model": [s]})
    assert "a draft step costs 0.400 target steps (modeled c = 0.25 (params))" in text
    assert "verification call costs 2.00 target-only steps (modeled: 1)" in text


def test_a_negative_verification_cost_is_reported_as_noise_not_as_a_number():
    extra = {"cost_ratio": 0.25, "cost_ratio_source": "params", "cost_ratio_measured": 0.4,
             "baseline_wall_s": 10.0, "baseline_target_calls": 100.0, "device": "cpu"}
    rows = [_row(m, a, q, lat, se=1.0, **extra) for m, a, q, lat in
            (("target", None, 20.0, 1.0), ("draft", None, 10.0, 0.25))]
    # 250 draft steps at 0.04 s are 10 s, more than the row's 8 s: timing noise, not a negative cost
    rows.append(_row("specdecode", None, 20.0, 1.0, se=1.0, wall_s=8.0, target_calls=50.0, draft_calls=250.0,
                     **extra))
    (s,) = summarize(rows)
    assert math.isnan(s.costs.verify_measured) and s.costs.verify_in_noise
    text = markdown_summaries({"latency_model": [s]})
    assert "verification call's cost is below the timing noise" in text and "-0." not in text


def test_summary_csv_records_the_rule_and_the_costs(tmp_path):
    (s,) = summarize(_curve(19.0))
    path = tmp_path / "summary.csv"
    write_summary_csv(path, [s])
    rows = list(csv.DictReader(path.open()))
    assert {r["match_rule"] for r in rows} == {"noise"}
    assert float(rows[0]["noise_se"]) == pytest.approx(math.sqrt(2), rel=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # no temporary left behind


# ---- the bootstrap at scoring time ---------------------------------------------------------------------


class _Ex:
    def __init__(self, i, reference, answer=None):
        self.id, self.reference, self.answer, self.source = f"e{i}", reference, answer, ""


def test_bootstrap_bleu_rescores_resampled_corpora_deterministically():
    from specref.tasks import get_task

    task = get_task("translation")
    examples = task.load("test")[:40]
    preds = [" ".join(e.reference.split()[: 3 + i % 5]) if i % 2 else e.reference for i, e in enumerate(examples)]
    quality = task.score(preds, examples)["bleu"]
    se, n_boot = bootstrap_se(task, preds, examples, quality)
    assert n_boot == 1000 and 0 < se < quality
    assert bootstrap_se(task, preds, examples, quality) == (se, n_boot)  # seeded: the same every time
    # the per-sentence statistics reproduce corpus BLEU on a resample (checked against sacreBLEU directly)
    se_rescored, n_small = bootstrap_se(_Rescore(task), preds, examples, quality, n_boot=150)
    assert n_small == 150 and se_rescored == pytest.approx(se, rel=0.25)
    identical = [e.reference for e in examples]
    assert bootstrap_se(task, identical, examples)[0] == pytest.approx(0.0, abs=1e-9)
    # paired: the same list against itself has no noise; against another, less than unpaired sqrt(2) x SE
    assert paired_bootstrap_se(task, preds, list(preds), examples) == 0.0
    other = [" ".join(e.reference.split()[: 2 + i % 7]) if i % 3 else e.reference for i, e in enumerate(examples)]
    se_other, _ = bootstrap_se(task, other, examples)
    paired = paired_bootstrap_se(task, preds, other, examples)
    assert 0 < paired < math.hypot(se, se_other)


class _Rescore:
    """The translation task under a metric name the bootstrap cannot split: it must re-score every resample."""

    def __init__(self, task):
        self.task, self.metric_name = task, "bleu_corpus"

    def score(self, predictions, examples):
        return {"bleu_corpus": self.task.score(predictions, examples)["bleu"]}


def test_bootstrap_mean_metric_matches_the_textbook_formula():
    from specref.tasks import get_task

    task = get_task("reasoning")
    examples = [_Ex(i, "", answer=str(i)) for i in range(50)]
    preds = [f"The answer is {i if i % 4 else i + 1}" for i in range(50)]  # 37 or 38 of 50 right
    quality = task.score(preds, examples)["accuracy"]
    se, _ = bootstrap_se(task, preds, examples, quality)
    p = quality / 100
    assert se == pytest.approx(100 * math.sqrt(p * (1 - p) / 50), rel=0.08)
    one = bootstrap_se(task, preds[:1], examples[:1])
    assert math.isnan(one[0]) and one[1] == 0


# ---- the CSV store stays backward compatible -------------------------------------------------------------


def _legacy_file(path, rows):
    """A points.csv exactly as the previous layout wrote it (header and per-row checksums)."""
    import zlib

    from specref.repro.store import format_value

    layout = LEGACY_LAYOUTS[0]
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle, lineterminator="\n")
        w.writerow(layout)
        for r in rows:
            fields = [format_value(c, r.get(c)) for c in layout[:-1]]
            fields.append(format(zlib.crc32("\x1f".join(fields).encode()), "08x"))
            w.writerow(fields)


def test_old_layout_reads_with_noise_missing_and_upgrades_on_append(tmp_path):
    path = tmp_path / "points.csv"
    old = [_row("target", None, 20.0, 1.0, tokens=5), _row("specdecode", None, 19.0, 0.6, tokens=6)]
    for r in old:
        r.pop("quality_se"), r.pop("n_boot"), r.pop("noise_method")
    _legacy_file(path, old)
    before = path.read_bytes()
    store = PointStore(path)
    rows = store.read()
    assert [r["quality"] for r in rows] == [20.0, 19.0] and math.isnan(rows[0]["quality_se"])
    assert rows[0]["n_boot"] is None and rows[0]["noise_method"] == ""
    assert len(store.keys()) == 2 and old[0] in store
    assert not store.append(old[0]) and path.read_bytes() == before  # resume: a stored key is not rewritten
    (s,) = summarize(rows)
    assert s.match_rule == "not judged"
    assert store.append(_row("token_v3", 0.5, 19.5, 0.5, se=1.0))  # the first new row upgrades the file
    with open(path, newline="") as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS
    again = PointStore(path).read()
    assert [r["method"] for r in again] == ["target", "specdecode", "token_v3"]
    assert again[1]["tokens"] == 6 and again[2]["quality_se"] == 1.0 and math.isnan(again[0]["quality_se"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv"]
    # damage in an old-layout file is still refused
    _legacy_file(path, old)
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("20.0", "21.0")
    path.write_text("".join(lines))
    from specref.repro.store import CorruptStoreError

    with pytest.raises(CorruptStoreError, match="line 2"):
        PointStore(path).read()
