"""Tests of the reproduction machinery: Table-2 math, the resumable CSV, sweeps, setups and the CLI.

The sweep logic is tested with a fake backend (deterministic, instant); the real decoder runs through the
stand-in configs and the CLI quick path with tiny random-init models.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from specref import rules
from specref.repro import methods as M
from specref.repro.backend import DecodeOutput, DecodeRequest
from specref.repro.runner import ROBUSTNESS, RunInfo, Setting, plan_points, run_points
from specref.repro.store import COLUMNS, KEY_COLUMNS, PointStore
from specref.repro.summary import CurvePoint, cost_to_match, frontier, quality_within, summarize

REPO = Path(__file__).resolve().parents[1]
P = CurvePoint


# ---- Table-2 math on hand-made curves --------------------------------------------------------------------


def test_frontier_drops_dominated_points_and_breaks_ties():
    pts = [P(0.5, 10), P(0.5, 12), P(0.4, 12), P(0.7, 11), P(0.9, 15), P(0.8, 15), P(math.nan, 99), P(1.2, 14)]
    front = frontier(pts)
    # equal cost -> higher quality; equal quality -> lower cost; dominated and NaN points dropped
    assert [(p.cost, p.quality) for p in front] == [(0.4, 12), (0.8, 15)]


def test_cost_to_match_interpolates_and_counts_equality():
    front = frontier([P(0.3, 10), P(0.5, 14), P(0.9, 20)])
    assert cost_to_match(front, 14) == 0.5  # equality matches
    assert cost_to_match(front, 17) == pytest.approx(0.7)  # halfway between 14 and 20
    assert cost_to_match(front, 17, interpolate=False) == 0.9
    assert cost_to_match(front, 5) == 0.3  # already above at the cheapest point: no extrapolation below it
    assert math.isnan(cost_to_match(front, 20.01))
    assert math.isnan(cost_to_match([], 1.0))


def test_quality_within_budget():
    front = frontier([P(0.3, 10), P(0.5, 14), P(1.5, 24)])
    assert quality_within(front, 0.5) == 14  # equal cost does not exceed the budget
    assert quality_within(front, 1.0) == pytest.approx(19)  # 0.5 -> 1.5 is +10 quality; halfway
    assert quality_within(front, 1.0, interpolate=False) == 14
    assert quality_within(front, 2.0) == 24  # flat after the last point
    assert math.isnan(quality_within(front, 0.2))  # even the cheapest point costs more


def _row(method, alpha, quality, lat, seed=0, label=None, **extra):
    base = {
        "task": "t", "pair": "p", "method": method, "alpha": alpha, "options": "", "temperature": 1.0,
        "gamma": 5, "top_p": None, "seed": seed, "split": "test", "n_examples": 10, "max_new_tokens": 8,
        "label": label or M.METHODS[method].label, "metric": "acc", "quality": quality, "latency_model": lat,
        "latency_wall": lat, "rejection_rate": extra.pop("rej", math.nan), "target_calls_per_token": lat,
    }
    base.update(extra)
    return base


def test_summarize_table2_numbers():
    rows = [
        _row("target", None, 20.0, 1.0), _row("draft", None, 10.0, 0.2),
        _row("specdecode", None, 20.0, 0.6, rej=0.3),
        # a cascade that beats the target: matches at 0.5 (interpolated), best within latency 1 is 22
        _row("token_v3", 0.9, 12.0, 0.3), _row("token_v3", 0.5, 22.0, 0.7), _row("token_v3", 0.1, 21.0, 0.9),
        # a baseline that only matches when slower than the target
        _row("token_cascade", 0.2, 15.0, 0.8), _row("token_cascade", 0.0, 20.0, 1.25),
    ]
    (s,) = summarize(rows, tol=0.0)  # tolerance 0: the numbers below are exact (the noise band has its own tests)
    by = {m.method: m for m in s.methods}
    assert set(by) == {"specdecode", "token_v3", "token_cascade"}  # references are not rows
    assert s.target_quality == 20 and s.draft_quality == 10 and s.ref_cost == 1.0
    assert by["token_v3"].cost_at_match == pytest.approx(0.3 + (20 - 12) / 10 * 0.4)
    assert by["token_v3"].reduction == pytest.approx(1 - by["token_v3"].cost_at_match)
    assert by["token_v3"].best_quality == 22 and by["token_v3"].best_delta == 2
    assert by["specdecode"].speedup == pytest.approx(1 / 0.6)
    assert by["token_cascade"].cost_at_match == 1.25 and by["token_cascade"].reduction == pytest.approx(-0.25)
    assert by["token_cascade"].best_quality == pytest.approx(15 + 0.2 / 0.45 * 5)
    # tolerance lowers the bar; the rejection-rate axis is read against SpecDecode's rejection rate
    (s_tol,) = summarize(rows, tol=1.0)
    assert {m.method: m for m in s_tol.methods}["token_v3"].cost_at_match < by["token_v3"].cost_at_match
    (s_rej,) = summarize(rows, axis="rejection_rate", tol=0.0)
    assert s_rej.ref_cost == 0.3


def test_summarize_averages_seeds():
    rows = [_row("target", None, q, 1.0, seed=s) for s, q in ((0, 19.0), (1, 21.0))]
    rows += [_row("specdecode", None, q, lat, seed=s) for s, q, lat in ((0, 18.0, 0.5), (1, 22.0, 0.7))]
    (s,) = summarize(rows)
    assert s.seeds == 2 and s.target_quality == 20.0
    assert s.methods[0].cost_at_match == pytest.approx(0.6)


def test_claims_verdicts_on_hand_made_rows():
    from specref.repro.claims import check_claims, claims_markdown

    def setting(t, v3_best, lossy_best):
        # one seed, a bootstrap SE of 0.1 over 100 examples: a noise band of 2 x sqrt(2) x 0.1 = 0.28
        noise = {"temperature": t, "n_examples": 100, "quality_se": 0.1}
        return [
            _row("target", None, 20.0, 1.0, **noise), _row("draft", None, 10.0, 0.2, **noise),
            _row("token_v3", 0.5, v3_best, 0.6, **noise), _row("token_v3", 0.9, 12.0, 0.3, **noise),
            _row("lossy", 0.5, lossy_best, 0.7, **noise), _row("opt", 0.0, 19.0, 0.8, **noise),
        ]

    rows = setting(1.0, 21.0, 19.5) + setting(0.0, 20.0, 19.9)
    c = {x.claim.split(" ")[0] + x.claim.split(" ")[1]: x for x in check_claims(rows)}
    # "the best" is judged only among all the paper's methods; three of them were run
    assert c["SpecCascade[Token]"].verdict.startswith("not judged: needs specdecode, chow")
    assert c["Speculativecascades"].verdict == "holds" and "+1.00" in c["Speculativecascades"].evidence
    assert c["AtT"].verdict == "holds" and "+1.50 at T = 1" in c["AtT"].evidence  # gain 1.5 -> 0.1
    assert c["OPTvs"].verdict == "reported"
    no_t0 = check_claims(setting(1.0, 21.0, 19.5))
    assert no_t0[2].verdict == "not measured"
    worse = check_claims(setting(1.0, 19.0, 19.5) + setting(0.0, 19.0, 19.0))
    assert worse[1].verdict == "does not hold"
    assert worse[2].verdict == "not shown (no gain beyond noise at T = 1)"  # TokenV3 trails Lossy at T = 1
    assert "| paper's claim |" in claims_markdown(worse)


# ---- the alpha grids span every rule's whole range ------------------------------------------------------


def _random_pair(n=400, vocab=7, seed=0):
    """Peaky random distributions (Dirichlet 0.5), float64, from a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dirichlet = torch.distributions.Dirichlet(torch.full((vocab,), 0.5, dtype=torch.float64))
        q, p = dirichlet.sample((n,)), dirichlet.sample((n,))
    return q / q.sum(-1, keepdim=True), p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("key", ["chow", "diff", "opt", "token_v1", "token_v2", "token_v3", "lossy"])
def test_full_grid_goes_from_specdecode_to_draft(key):
    q, p = _random_pair()
    grid = M.METHODS[key].full
    lo, hi = rules.get(key, alpha=min(grid)), rules.get(key, alpha=max(grid))
    out_lo, out_hi = lo(q, p), hi(q, p)
    if key == "lossy":  # alpha = 0 is SpecDecode; alpha < 1 never reaches draft-only, but gets close
        assert torch.allclose(out_lo.pi, p, atol=1e-12)
        assert float(out_hi.rejection_rate(q).mean()) < 0.2 * float(out_lo.rejection_rate(q).mean())
        return
    if key == "chow":  # alpha = 0 defers wherever the draft is not certain
        assert bool((out_lo.defer == 1).all())
    else:
        assert torch.allclose(out_lo.pi, p, atol=1e-12), "lowest alpha must be SpecDecode"
    assert torch.allclose(out_hi.pi, q, atol=1e-12), "highest alpha must be draft-only"


def test_plan_includes_references_dedups_and_overrides():
    pts = plan_points(["token_v3", "bild"], [Setting(), Setting()], [0, 1], alphas={"token_v3": (0.5,)})
    assert [p.method for p in pts[:2]] == ["target", "draft"]
    assert len(pts) == len(set(pts)) == 2 * (2 + 1 + 3 * 2)  # bild: 3 quick alphas x 2 rollback options
    assert M.parse_alpha_overrides("0,1", ("chow", "target")) == {"chow": (0.0, 1.0)}
    assert M.parse_alpha_overrides("chow=0.5;token_v3=-1,inf", ("chow", "token_v3")) == {
        "chow": (0.5,), "token_v3": (-1.0, math.inf)}
    with pytest.raises(ValueError):
        M.parse_alpha_overrides("target=0.5", ("target",))
    with pytest.raises(ValueError):
        M.parse_alpha_overrides("chow=x", ("chow",))
    assert Setting(top_p=1.0) == Setting(top_p=None)
    assert len(ROBUSTNESS["temperature"]) == 4 and {s.gamma for s in ROBUSTNESS["gamma"]} == {3, 5, 7}


# ---- sweeps with a fake backend ----------------------------------------------------------------------------


class FakeTask:
    """Accuracy of predictions equal to "ok"."""

    name, metric_name, model_family = "fake", "accuracy", "seq2seq"

    def load(self, split="test", limit=None):
        return [Ex(i) for i in range(40)][:limit]

    def score(self, predictions, examples):
        return {"accuracy": 100.0 * sum(p == "ok" for p in predictions) / len(predictions), "empty_rate": 0.0,
                "loop_rate": 0.0}


class Ex:
    def __init__(self, i):
        self.id = f"ex{i}"


class FakeBackend:
    """Deterministic fake decodes: quality falls and cost drops as alpha grows; counts every call."""

    device = "fake"

    def __init__(self, log=None, die_after=None):
        self.calls, self.log, self.die_after = [], log, die_after

    def cost_ratio(self):
        return 0.25, "fake"

    def warmup(self):
        pass

    def decode(self, req: DecodeRequest, examples):
        self.calls.append((req.method, req.alpha, req.gamma, req.temperature))
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{req.method} {req.alpha}\n")
        if self.die_after is not None and len(self.calls) > self.die_after:
            os.kill(os.getpid(), 9)
        frac = {"target": 0.8, "draft": 0.4}.get(req.method, 0.8 - 0.4 * max(0.0, min(1.0, req.alpha or 0.0)))
        preds = []
        for e in examples:
            h = int(hashlib.sha256(f"{req.seed}{e.id}{req.method}{req.alpha}".encode()).hexdigest(), 16) % 1000
            preds.append("ok" if h < 1000 * frac else "no")
        n = 10 * len(examples)  # tokens
        spec = req.method not in ("target", "draft")
        target_calls = {"target": n, "draft": 0}.get(req.method, n * frac / 2)
        return DecodeOutput(
            predictions=preds, tokens=n, target_calls=target_calls,
            draft_calls=0 if req.method == "target" else 1.5 * n, drafted=n if spec else 0,
            rejected=n * frac / 2 if spec else 0, deferrals=n * frac if spec else 0, positions=n if spec else 0,
            wall_s=0.01 * (target_calls + 0.25 * 1.5 * n),
        )


def _info(n=20):
    return RunInfo(task=FakeTask(), pair="fake-pair", split="test", examples=[Ex(i) for i in range(n)],
                   max_new_tokens=10, batch_size=4, cost_ratio=0.25, cost_ratio_source="fake", version="test")


_STABLE = [c for c in COLUMNS if c not in ("latency_wall", "wall_s", "baseline_wall_s", "cost_ratio_measured",
                                           "run_id", "time_utc", "row_crc32")]


def test_run_points_resumes_and_shares_gamma_free_decodes(tmp_path):
    pts = plan_points(["chow", "token_cascade"], ROBUSTNESS["gamma"], [0])
    store = PointStore(tmp_path / "p.csv")
    fake = FakeBackend()
    rep = run_points(fake, store, _info(), pts, progress=False)
    assert rep.written == len(pts)
    # gamma-free methods (target, draft, token_cascade) decode once for the 3 gammas; chow decodes per gamma
    assert rep.decoded == 1 + 1 + 3 * 3 + 3
    rows = store.read()
    t = [r for r in rows if r["method"] == "target"]
    assert len(t) == 3 and all(r["latency_model"] == 1.0 and r["latency_wall"] == 1.0 for r in t)
    d = next(r for r in rows if r["method"] == "draft")
    assert d["latency_model"] == pytest.approx(0.25 * 1.5)  # c * draft calls / target-only target calls
    # every row carries its bootstrap noise; the target's difference from itself has none
    assert all(r["quality_se"] > 0 and r["n_boot"] == 1000 and r["noise_method"] == "bootstrap" for r in rows)
    assert all(r["quality_diff_se"] == 0.0 for r in t) and d["quality_diff_se"] > 0
    c = next(r for r in rows if r["method"] == "chow" and r["alpha"] == 0.5)
    assert c["latency_model"] == pytest.approx(0.6 / 2 + 0.25 * 1.5) and c["rejection_rate"] == pytest.approx(0.3)
    assert c["target_calls_per_token"] == pytest.approx(0.3) and c["deferral_rate"] == pytest.approx(0.6)
    # second run: nothing to do
    fake2 = FakeBackend()
    rep2 = run_points(fake2, store, _info(), pts, progress=False)
    assert rep2.decoded == 0 and rep2.skipped == len(pts) and fake2.calls == []


def test_resume_after_missing_rows_redecodes_baseline_only_once(tmp_path):
    pts = plan_points(["chow"], [Setting()], [0, 1])
    full = PointStore(tmp_path / "full.csv")
    run_points(FakeBackend(), full, _info(), pts, progress=False)
    # keep only the first three rows, as after an interruption
    lines = (tmp_path / "full.csv").read_text().splitlines(keepends=True)
    (tmp_path / "part.csv").write_text("".join(lines[:4]))
    part = PointStore(tmp_path / "part.csv")
    fake = FakeBackend()
    rep = run_points(fake, part, _info(), pts, progress=False)
    assert rep.baseline_redecodes == 1 and not rep.nondeterministic
    assert fake.calls[0][0] == "target"
    stable = lambda rows: sorted(tuple(str(r[c]) for c in _STABLE) for r in rows)  # noqa: E731
    assert stable(part.read()) == stable(full.read())


_KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    import test_repro as T
    from specref.repro.runner import plan_points, run_points, Setting
    from specref.repro.store import PointStore
    mode, path = sys.argv[1], sys.argv[2]
    pts = plan_points(["chow", "token_v3"], [Setting()], [0])
    if mode == "torn":  # die in the middle of writing the 4th row
        real, count = os.write, [0]
        def torn(fd, data):
            count[0] += 1
            if count[0] == 4:
                real(fd, bytes(data)[: len(data) // 2])
                os.kill(os.getpid(), 9)
            return real(fd, data)
        os.write = torn
        run_points(T.FakeBackend(), PointStore(path), T._info(), pts, progress=False)
    else:  # killed between rows, during the 6th decode
        run_points(T.FakeBackend(die_after=5), PointStore(path), T._info(), pts, progress=False)
""")


@pytest.mark.parametrize("mode", ["torn", "between"])
def test_interrupted_sweep_resumes_without_loss_or_duplicates(tmp_path, mode):
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT.format(repo=str(REPO), tests=str(Path(__file__).parent)))
    path = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, str(script), mode, str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert path.read_bytes().endswith(b"\n") == (mode == "between")  # "torn" left half a line behind
    before = PointStore(path).read()
    assert len(before) == (3 if mode == "torn" else 5)
    pts = plan_points(["chow", "token_v3"], [Setting()], [0])
    run_points(FakeBackend(), PointStore(path), _info(), pts, progress=False)
    after = PointStore(path).read()
    keys = [tuple(str(r[c]) for c in KEY_COLUMNS) for r in after]
    assert len(keys) == len(set(keys)) == len(pts)
    ref = PointStore(tmp_path / "ref.csv")
    run_points(FakeBackend(), ref, _info(), pts, progress=False)
    stable = lambda rows: sorted(tuple(str(r[c]) for c in _STABLE) for r in rows)  # noqa: E731
    assert stable(after) == stable(ref.read())


def test_reproduce_writes_everything_and_rereads_counts_at_a_new_cost_ratio(tmp_path):
    from specref.repro.reproduce import ReproConfig, reproduce, select_examples
    from specref.repro.setups import Setup

    setup = Setup(name="fake", task=FakeTask(), pair="fake-pair", draft="d", target="t", tokenizer="x",
                  family="seq2seq")
    cfg = ReproConfig(methods=("specdecode", "token_v3"), max_examples=10, progress=False, sweep="all")
    fake = FakeBackend()
    res = reproduce(setup, tmp_path, cfg, backend=fake)
    names = {f.name for f in res.files}
    assert {"points.csv", "summary.csv", "summary.md", "claims.md", "cost_quality.png",
            "robustness_temperature.png", "robustness_gamma.png", "robustness_top_p.png"} <= names
    assert {r["n_examples"] for r in res.rows} == {10}
    assert len(res.summaries["latency_model"]) == 8  # main + 4 T + 3 gamma + 3 top-p, shared main removed
    spec = next(r for r in res.rows if r["method"] == "specdecode" and r["temperature"] == 1.0 and r["gamma"] == 5)
    # a new c re-reads the stored counts: no decoding, every row on the new c
    again = reproduce(setup, tmp_path, ReproConfig(**{**cfg.__dict__, "cost_ratio": 1.0}), backend=FakeBackend())
    assert again.report.decoded == 0
    spec2 = next(r for r in again.rows if r["method"] == "specdecode" and r["temperature"] == 1.0 and r["gamma"] == 5)
    assert spec2["latency_model"] == pytest.approx(spec["latency_model"] + (1.0 - 0.25) * 1.5)
    assert [e.id for e in select_examples([Ex(i) for i in range(10)], 4)] == ["ex0", "ex2", "ex5", "ex7"]


def test_render_rewrites_outputs_from_points_without_decoding(tmp_path, capsys):
    from specref.repro.reproduce import ReproConfig, main, render, reproduce
    from specref.repro.setups import Setup

    setup = Setup(name="fake", task=FakeTask(), pair="fake-pair", draft="d", target="t", tokenizer="x",
                  family="seq2seq")
    cfg = ReproConfig(methods=("specdecode", "token_v3"), max_examples=40, progress=False, plots=False)
    res = reproduce(setup, tmp_path, cfg, backend=FakeBackend())
    out = res.out_dir
    summary, claims = (out / "summary.md").read_text(), (out / "claims.md").read_text()
    assert "noise band" in summary and "paired bootstrap SE of SpecDecode minus target over 40 examples" in summary
    (out / "summary.md").unlink()
    files = render(out, plots=False)
    assert (out / "summary.md").read_text() == summary and (out / "claims.md").read_text() == claims
    assert {f.name for f in files} == {"points.csv", "summary.csv", "summary.md", "claims.md"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # a noise run must cover the same examples
    other = reproduce(setup, tmp_path / "other", ReproConfig(**{**cfg.__dict__, "max_examples": 20}),
                      backend=FakeBackend())
    before = (out / "summary.md").read_text()
    assert main(["--render", str(out), "--noise-from", str(other.out_dir), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoded other examples" in err and (out / "summary.md").read_text() == before
    assert main(["--render", str(tmp_path / "missing")]) == 2
    assert "run.json not found" in capsys.readouterr().err
    # a setup's folder cannot climb out of the output folder
    bad = Setup(name="bad", task=FakeTask(), pair="fake-pair", draft="d", target="t", tokenizer="x",
                family="seq2seq", folder="../escape")
    with pytest.raises(ValueError, match="outside"):
        reproduce(bad, tmp_path / "o", cfg, backend=FakeBackend())
    assert not (tmp_path / "escape").exists()


# ---- real decoder: stand-in setups and the CLI quick path ---------------------------------------------------

CONFIGS = sorted((REPO / "configs" / "paper").glob("*.yaml"))


def test_every_paper_config_is_complete():
    from specref.repro.setups import load_setup

    assert len(CONFIGS) >= 9
    for path in CONFIGS:
        setup = load_setup(path)
        assert setup.defaults["gamma"] == 5 and setup.defaults["temperature"] == 1.0
        assert "/path/to/" in str(setup.draft)  # placeholders, never a downloaded model
        axis = "rejection_rate" if setup.family == "causal" else "latency_wall"
        assert setup.defaults["axis"] == axis
        assert load_setup(path, standin=True).is_standin


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_standin_paper_setup_runs_end_to_end(tmp_path, path):
    from specref.repro.reproduce import ReproConfig, reproduce
    from specref.repro.setups import load_setup

    setup = load_setup(path, standin=True)
    cfg = ReproConfig(methods=("specdecode", "token_v3"), alphas={"token_v3": (0.5,)}, progress=False,
                      plots=False)
    res = reproduce(setup, tmp_path, cfg)
    assert {r["method"] for r in res.rows} == {"target", "draft", "specdecode", "token_v3"}
    assert all(r["n_examples"] == 2 and r["max_new_tokens"] == 4 for r in res.rows)
    assert (res.out_dir / "summary.md").is_file()
    spec = next(r for r in res.rows if r["method"] == "specdecode")
    assert spec["tokens"] > 0 and spec["target_calls"] > 0 and spec["draft_calls"] > 0


def test_cli_quick_path_on_standin_pair(tmp_path, capsys):
    from specref.cli import main

    base = ["reproduce", "--standin", "--max-examples", "3", "--max-new-tokens", "5", "--methods",
            "specdecode,token_v3,seq_cascade", "--alphas", "token_v3=0.5;seq_cascade=0.5", "--no-progress"]
    argv = [*base, "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Table 2" in out and "SpecCascade [TokenV3]" in out and "SeqCascade [Chow]" in out
    folder = tmp_path / "bible-en-es-t5-standin"
    assert (folder / "cost_quality.png").stat().st_size > 10_000
    first = PointStore(folder / "points.csv").read()
    assert len(first) == 5
    # a rerun resumes: no new rows, identical deterministic columns
    assert main(argv) == 0
    assert "0 new rows, 5 rows already" in capsys.readouterr().out
    again = PointStore(folder / "points.csv").read()
    assert [r["predictions_sha"] for r in again] == [r["predictions_sha"] for r in first]
    # same seeds in a fresh folder: same predictions and modeled latency
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    fresh = PointStore(tmp_path / "b" / "bible-en-es-t5-standin" / "points.csv").read()
    stable = ("predictions_sha", "quality", "latency_model", "rejection_rate", "target_calls", "draft_calls")
    assert [[r[c] for c in stable] for r in fresh] == [[r[c] for c in stable] for r in first]


def test_cli_rejects_bad_input(tmp_path, capsys):
    from specref.cli import main

    assert main(["reproduce", "--standin", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["reproduce", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("full", [False, True])
def test_every_grid_point_builds_a_decoder(full):
    """Regression: the full SeqCascade grid once ended at alpha = 1, which the decoder rejects."""
    from specref.decode import make_decoder
    from specref.decode.testing import tiny_pair
    from specref.repro.methods import METHODS

    draft, target = tiny_pair("llama")
    for key, spec in METHODS.items():
        if spec.needs_head:
            continue
        for options in spec.options or ({},):
            for alpha in spec.grid(full):
                make_decoder(draft, target, key, alpha=alpha, **options)


def test_resuming_with_another_head_is_refused(tmp_path):
    """Points are keyed by method and alpha, not by head: a folder holding one head's learned rows refuses a
    run with another head (it would keep the old rows as this head's), and resumes with the same head."""
    from pathlib import Path

    from specref import heads
    from specref.repro.reproduce import ReproConfig, reproduce
    from specref.repro.setups import zoo_setup

    shipped = Path(__file__).resolve().parents[1] / "results" / "learned" / "bible-en-es-t5" / "heads"
    setup = zoo_setup("bible-en-es-t5", standin=True)
    cfg = ReproConfig(methods=("learned",), alphas={"learned": (0.0,)}, max_examples=2, max_new_tokens=3,
                      progress=False, plots=False)
    first = heads.load(shipped / "cascade_argmax")
    reproduce(setup, tmp_path, cfg, head=first)
    again = reproduce(setup, tmp_path, cfg, head=heads.load(shipped / "cascade_argmax"))
    assert again.report.decoded == 0  # same head: everything resumed
    with pytest.raises(ValueError, match="learned rows of another head"):
        reproduce(setup, tmp_path, cfg, head=heads.load(shipped / "cascade_sampled"))
