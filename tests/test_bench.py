"""The benchmark suite (bench/suite.py, ``specref bench``) end to end on a CPU with tiny models.

One ``--smoke`` run covers every section the GPU run has: bandwidth copy, corpus + BPE tokenizer + the
trained pair, specref engines vs transformers' generate / assisted generation at three batch sizes, the
round profile, the bandwidth-floor model, and the data-parallel sweep through torchrun (two CPU processes),
then the JSON / markdown report. Numbers are meaningless here; the structure and the plumbing are not.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _suite():
    spec = importlib.util.spec_from_file_location("bench_suite_under_test", REPO / "bench" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke"
    suite = _suite()
    rc = suite.main(["--smoke", "--out", str(out), "--budget-s", "1000", "--dp", "on", "--dp-examples", "6",
                     "--dp-batch", "2", "--dp-new-tokens", "4", "--eager-profile", "on"])
    assert rc == 0
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text()


def test_smoke_run_measures_every_section(smoke):
    R, md = smoke
    assert R["smoke"] and not R["errors"], R["errors"]
    assert R["env"]["bandwidth"]["gb_per_s"] > 0
    assert R["pair"]["target_params"] > R["pair"]["draft_params"] > 0
    for role in ("target_training", "draft_training"):
        assert R["pair"][role]["steps"] > 0 and math.isfinite(R["pair"][role]["final_loss"])
    dec = R["decode"]
    for b in (1, 2, 4):
        for eng in ("fast", "graph", "plain"):
            for m in ("target", "specdecode", "token_v3"):
                r = dec[f"specref/{eng}/{m}/b{b}"]
                assert r["tokens_per_s"] > 0 and r["latency_ms"] > 0
                if m != "target":
                    assert 0 <= r["acceptance_rate"] <= 1
        assert dec[f"hf/target/b{b}"]["tokens_per_s"] > 0
    assert dec["hf/assisted/b1"]["tokens_per_s"] > 0
    # identical decoding across engines: same tokens generated (no EOS: every row runs to the limit)
    assert len({dec[f"specref/{e}/specdecode/b4"]["tokens"] for e in ("fast", "graph", "plain")}) == 1
    for key, p in R["profile"].items():
        assert 0 < p["outside_share"] < 1, key
    assert "plain/specdecode/b1" in R["profile"]  # the eager-engine diagnosis (one request)
    assert R["profile"]["plain/specdecode/b1"]["per_role"]["target"]["calls"] > 0
    bw = R["bandwidth_1b"]
    assert bw["floor_ms"] > 0 and all(v["x_floor"] > 0 for v in bw["engines"].values())
    dp = R["dp"]
    assert dp["rows_equal"] is True and dp["speedup_decode"] > 0
    assert set(R["targets"]) >= {"specdecode_vs_target_only_b1", "specdecode_vs_hf_assisted_b1",
                                 "target_forward_x_floor_1b_b1", "dp_2gpu_speedup"}
    for heading in ("Decoding throughput", "outside the model forwards", "bandwidth floor", "Data-parallel",
                    "Performance targets"):
        assert heading in md


def test_cli_exposes_the_suite(capsys):
    from specref.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--smoke" in out and "--engines" in out and "--budget-s" in out


def test_same_engine_ratio_pairs_each_engine_with_its_own_target_only():
    suite = _suite()
    dec = {
        "specref/graph/target/b1": {"tokens_per_s": 100.0},
        "specref/graph/specdecode/b1": {"tokens_per_s": 150.0},
        "specref/compile-graph/target/b1": {"tokens_per_s": 160.0},  # no speculative row of its own
        "specref/fast/target/b1": {"tokens_per_s": 20.0},
        "specref/fast/specdecode/b1": {"tokens_per_s": 50.0},
    }
    t = suite.summarize({"decode": dec}, [1])
    # strict: best speculative (150) over best target-only of any engine (160)
    assert t["specdecode_vs_target_only_b1"]["ratio"] == pytest.approx(150 / 160)
    assert t["specdecode_vs_target_only_b1"]["met"] is False
    # same engine: fast 2.5x beats graph 1.5x; compile-graph has no pair and is ignored
    assert t["specdecode_vs_target_only_same_engine_b1"] == {"ratio": pytest.approx(2.5), "engine": "fast"}


def test_render_rewrites_the_report_from_a_finished_run(smoke, tmp_path):
    R, md = smoke
    path = tmp_path / "run.json"
    R = dict(R)
    R.pop("targets")
    path.write_text(json.dumps(R))
    assert _suite().main(["--render", str(path)]) == 0
    again = json.loads(path.read_text())
    assert again["targets"] and again["decode"] == R["decode"] and again["total_seconds"] == R["total_seconds"]
    assert (tmp_path / "run.md").read_text() == md  # the same report as the run wrote itself
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(SystemExit, match="not a bench"):
        _suite().main(["--render", str(tmp_path / "bad.json")])


def _renders_as_committed(name: str, tmp_path, render_main) -> dict:
    """Re-render a copy of ``bench/results/<name>.json`` with ``render_main(["--render", ...])``; the markdown
    must equal the committed one. Returns the run's JSON."""
    src = REPO / "bench" / "results" / f"{name}.json"
    copy = tmp_path / f"{name}.json"
    copy.write_text(src.read_text())
    assert render_main(["--render", str(copy)]) == 0
    assert (tmp_path / f"{name}.md").read_text() == (REPO / "bench" / "results" / f"{name}.md").read_text()
    return json.loads(src.read_text())


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "bench" / "results").glob("nvidia-*.md")
                                         if "-realistic-" not in p.stem and "-compile-warmup-" not in p.stem))
def test_committed_gpu_reports_match_their_measurements(name, tmp_path):
    """A committed GPU report is exactly what its own JSON renders to (no hand-edited or stale numbers)."""
    R = _renders_as_committed(name, tmp_path, _suite().main)
    assert not R["smoke"] and "NVIDIA" in R["env"]["device"]


def test_eager_engines_diagnosis_runs_and_checks_identical_tokens(tmp_path):
    """bench/eager_engines.py on tiny shapes (CPU): every variant decodes the same tokens as `plain`, and the
    JSON is written (after every variant, so a run cut short keeps its rows)."""
    from bench import eager_engines

    out = tmp_path / "ee.json"
    assert eager_engines.main(["--device", "cpu", "--smoke", "--batch", "2", "--max-new-tokens", "12",
                               "--prompt-len", "8", "--vocab", "256", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert runs["identical_tokens/b2"] == {"plain": True, "fast": True, "fast+contig-mask": True}
    row = runs["fast/b2"]
    assert row["tokens"] > 0 and row["rounds"] > 0 and row["trace"]["top_host_ops"]


# ---- the realistic-size section (bench/realistic.py) ------------------------------------------------------------


@pytest.fixture(scope="module")
def realistic_run(tmp_path_factory):
    from bench import realistic

    out = tmp_path_factory.mktemp("realistic") / "real"
    assert _suite().main(["--realistic", "--smoke", "--out", str(out)]) == 0  # through the suite's flag
    return realistic, json.loads(out.with_suffix(".json").read_text()), out


def test_realistic_smoke_measures_every_part(realistic_run):
    realistic, R, out = realistic_run
    assert R["section"] == "realistic" and R["smoke"] and not R["errors"], R["errors"]
    assert set(R["drafts_done"]) == {"1b", "0.5b"}
    for d in ("1b", "0.5b"):
        ag = R["agreement"][d]
        assert list(ag) == [f"{t:g}" for t in realistic.TEMPERATURES]
        assert all(0 < v <= 1 for v in ag.values())
        assert R["temperature"][d] == realistic.pick_temperature(ag)
    dec = R["decode"]
    for b in (1, 2):
        assert dec[f"specref/graph/target/b{b}"]["tokens"] == b * 8  # no EOS: every row runs to the limit
        for d in ("1b", "0.5b"):
            for m in ("specdecode", "token_v3"):
                row = dec[f"specref/graph/{m}/{d}/b{b}"]
                assert row["tokens"] == b * 8 and 0 <= row["acceptance_rate"] <= 1
                # the block-size policy beside it, calibrated from the fixed row: what it chose is reported
                pol = dec[f"specref/graph/{m}-adaptive/{d}/b{b}"]
                assert pol["tokens"] == b * 8 and pol["policy"]["c"] >= 0 and pol["policy"]["verify_slope"] >= 0
                assert pol["policy"] == {**realistic.calibrate(R, d, m, b), "repr": pol["policy"]["repr"]}
                rounds = {int(g): n for g, n in pol["gamma_rounds"].items()}
                assert sum(rounds.values()) == pol["rounds"] and (m == "specdecode" or 0 not in rounds)
                assert pol["zero_share"] == pytest.approx(rounds.get(0, 0) / pol["rounds"])
                summary = R["analysis"]["policy"][f"specref/graph/{m}-adaptive/{d}/b{b}"]
                assert summary["mean_gamma"] == pol["mean_gamma"] and summary["vs_target"] == pytest.approx(
                    pol["tokens_per_s"] / dec[f"specref/graph/target/b{b}"]["tokens_per_s"])
        for d in ("1b", "0.5b"):  # the fixed SpecDecode row, timed again after the policy rows: both timings'
            row = dec[f"specref/graph/specdecode/{d}/b{b}"]  # passes make its spread
            again = row["recheck_tokens_per_s_each"]
            assert len(again) == 1 and row["tokens_per_s_each"][-1:] == again and len(row["tokens_per_s_each"]) == 2
            assert row["tokens_per_s"] == row["tokens_per_s_each"][0]
    assert not any(k.endswith("#recheck") for k in dec)
    for key in ("transformers/eager/target/b1", "transformers/static/target/b1", "transformers/assisted/1b/b1",
                "transformers/assisted/0.5b/b1", "transformers/static/target/b2"):
        assert dec[key]["tokens_per_s"] > 0, key
    A = R["analysis"]
    s = A["steps"]["1b/b1"]
    assert s["ms"] > 0 and s["floor_ms"] > 0 and s["c"] == pytest.approx(s["ms"] / A["steps"]["target/b1"]["ms"])
    assert s["draft_calls_per_round"] >= R["args"]["gamma"]
    assert set(A["targets"]) >= {"target_only_b1", "specdecode_b1", "specdecode_b1_vs_hf_static_compiled",
                                 "fixed_gamma_specdecode_vs_target_b32", "adaptive_specdecode_vs_target_b32",
                                 "outside_share_b32"}
    md = out.with_suffix(".md").read_text()
    assert "## Targets" in md and "1 - TV, 1b draft" in md and "SMOKE RUN" in md
    assert "What the block-size policy chose" in md and "1b draft, block-size policy" in md


def test_realistic_smoke_times_the_t5_pair(realistic_run):
    """The T5 part decodes an encoder-decoder pair on the graph engine at every batch size, at the temperature
    picked from its own agreement, and the report has its table."""
    realistic, R, out = realistic_run
    t5 = R["t5"]
    assert t5["temperature"] == realistic.pick_temperature(t5["agreement"])
    assert t5["params"]["target"] > t5["params"]["draft"] > 0
    for b in (1, 2):
        assert R["decode"][f"specref/graph/t5/target/b{b}"]["tokens"] == b * 8
        for m in ("specdecode", "token_v3"):
            row = R["decode"][f"specref/graph/t5/{m}/b{b}"]
            assert row["tokens"] == b * 8 and 0 <= row["acceptance_rate"] <= 1
    md = out.with_suffix(".md").read_text()
    assert "T5 v1.1 shapes, random weights" in md and "| SpecCascade [token_v3] |" in md


def test_realistic_ceiling_is_specref_cost_formula(realistic_run):
    """The ceiling comes from specref.cost (one formula, one place), fed with the run's measured b and c."""
    from specref.cost import walltime_factor

    _, R, _ = realistic_run
    assert set(R["analysis"]["ceilings"]) == {"1b/b1", "0.5b/b1", "1b/b2", "0.5b/b2"}  # profiled at every batch
    for c in R["analysis"]["ceilings"].values():
        assert c["speedup_model"] == pytest.approx(walltime_factor(c["acceptance"], R["args"]["gamma"], c["c"]))


def test_pick_temperature_interpolates_in_log_t():
    from bench import realistic

    assert realistic.pick_temperature({"1": 0.4, "2": 0.7, "4": 0.9}) == pytest.approx(2 * 2 ** 0.5, abs=1e-3)
    assert realistic.pick_temperature({"1": 0.85, "2": 0.9}) == 1.0  # every point above the goal: the smallest T
    assert realistic.pick_temperature({"1": 0.1, "2": 0.2}) == 2.0  # none reaches it: the largest T


def test_weight_bytes_count_a_tied_output_matrix_once_and_skip_an_untied_input_embedding():
    from bench import realistic

    shape = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    import torch

    tied = realistic.build(shape, True, vocab=100, device="cpu", dtype=torch.float32)
    untied = realistic.build(shape, False, vocab=100, device="cpu", dtype=torch.float32)
    emb = 100 * 16 * 4
    body = sum(p.numel() for n, p in tied.named_parameters() if "embed" not in n and "lm_head" not in n) * 4
    assert realistic.weight_bytes(tied) == body + emb  # the shared matrix is read once, by the output layer
    assert realistic.weight_bytes(untied) == body + emb  # the output matrix is read; the input lookup is not


def test_realistic_refuses_an_unknown_draft_or_part():
    from bench import realistic

    with pytest.raises(ValueError, match="unknown draft '3b'; allowed: 1b, 0.5b"):
        realistic.main(["--smoke", "--drafts", "3b", "--out", "/nonexistent/x"])
    with pytest.raises(ValueError, match="unknown part"):
        realistic.main(["--smoke", "--parts", "core,gpu", "--out", "/nonexistent/x"])


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "bench" / "results").glob("nvidia-*-realistic-*.md")))
def test_committed_realistic_reports_match_their_measurements(name, tmp_path):
    """A committed realistic-size report is exactly what its own JSON renders to, measured on an NVIDIA GPU."""
    from bench import realistic

    R = _renders_as_committed(name, tmp_path, realistic.main)
    assert not R["smoke"] and "NVIDIA" in R["env"]["device"]
    assert R["models"]["target"]["params"] > 7e9 and not R["errors"]


# ---- the CPU comparison with transformers' assisted generation (bench/assisted_cpu.py) --------------------------


def test_assisted_cpu_smoke_times_every_configuration_on_the_same_prompts(tmp_path):
    """``--assisted-cpu --smoke``: the zoo pair arith-llama, 2 prompts, 6 tokens, one pass; every configuration
    decodes, the counts are those of its algorithm, the policies get the calibrated costs, and the markdown is
    what the JSON renders to."""
    from bench import assisted_cpu

    out = tmp_path / "assisted"
    assert _suite().main(["--assisted-cpu", "--smoke", "--out", str(out)]) == 0  # through the suite's flag
    R = json.loads(out.with_suffix(".json").read_text())
    assert R["section"] == "assisted-cpu" and R["smoke"] and not R["errors"]
    assert R["pair"]["name"] == "arith-llama" and R["prompts"]["examples"] == 2 and len(R["passes"]) == 1
    C = R["calibration"]
    assert C["c"] > 0 and C["verify_slope"] >= 0 and C["outside_ms_per_round"] > 0
    assert C["policy"].startswith(f"AdaptiveGamma(c={C['c']!r}, verify_slope={C['verify_slope']!r}, ")
    S = R["summary"]["configs"]
    assert list(S) == [k for k, _ in assisted_cpu.CONFIGS]
    for key, row in S.items():
        assert row["tokens_per_s"]["median"] > 0 and row["target_calls_per_token"] > 0, key
        assert row["ms_per_token"] >= row["draft_fwd_ms_per_token"] + row["target_fwd_ms_per_token"], key
    for key in ("hf/target", "specref/target"):
        assert S[key]["draft_calls_per_token"] == 0 and "acceptance" not in S[key]
    assert S["hf/target"]["target_calls_per_token"] == 1.0  # its prefill gives the first token
    gamma = R["args"]["gamma"]
    assert S["specref/specdecode/fixed"]["gamma_share"] == {str(gamma): 1.0}
    assert all(int(g) <= gamma for g in S["hf/assisted/constant"]["gamma_share"])
    for key in ("hf/assisted/default", "hf/assisted/constant", "specref/specdecode/fixed", assisted_cpu.POLICY):
        assert 0 <= S[key]["acceptance"] <= 1 and S[key]["rounds"] > 0, key
        assert sum(S[key]["gamma_share"].values()) == pytest.approx(1.0)
    assert all(0 <= int(g) <= gamma for g in S[assisted_cpu.POLICY]["gamma_share"])
    assert isinstance(R["summary"]["target"]["met"], bool)
    # the confidence stop (transformers' threshold, blocks of at most 20), alone and under the policy
    assert R["args"]["stop_threshold"] == 0.4 and R["args"]["stop_gamma"] == 20
    for key, name in ((assisted_cpu.STOP, "stop_vs"), (assisted_cpu.STOP_POLICY, "stop_policy_vs")):
        assert 0 <= S[key]["acceptance"] <= 1 and 0 <= S[key]["stop_share"] <= 1, key
        assert all(0 <= int(g) <= 20 for g in S[key]["gamma_share"]), key  # the policy may take g = 0
        assert isinstance(R["summary"][name]["met"], bool) and R["summary"][name]["hf/assisted/default"]
    assert "confidence stop 0.4, gamma max 20 / assisted generation" in out.with_suffix(".md").read_text()
    # the report is what its JSON renders to
    copy = tmp_path / "copy.json"
    copy.write_text(out.with_suffix(".json").read_text())
    assert assisted_cpu.main(["--render", str(copy)]) == 0
    assert (tmp_path / "copy.md").read_text() == out.with_suffix(".md").read_text()


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "bench" / "results").glob("cpu-assisted-*.md")))
def test_committed_assisted_cpu_reports_match_their_measurements(name, tmp_path):
    """A committed CPU comparison with assisted generation is exactly what its own JSON renders to."""
    from bench import assisted_cpu

    R = _renders_as_committed(name, tmp_path, assisted_cpu.main)
    assert not R["smoke"] and not R["errors"] and R["prompts"]["examples"] >= 32


# ---- compiled decoder warm-up in fresh processes (bench/compile_warmup.py) --------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "bench" / "results").glob("*-compile-warmup-*.md")))
def test_committed_compile_warmup_reports_match_their_measurements(name):
    """A committed warm-up report is exactly what its own JSON renders to, and says which machine ran it."""
    from bench import compile_warmup

    R = json.loads((REPO / "bench" / "results" / f"{name}.json").read_text())
    assert compile_warmup.markdown(R) == (REPO / "bench" / "results" / f"{name}.md").read_text()
    assert R["smoke"] == name.startswith("cpu-") and (R["smoke"] or "NVIDIA" in R["env"]["device"])


def test_compile_warmup_report_and_refusals(tmp_path):
    """The report says met / missed against the goal from the warm pass, shows the cache counters of both
    passes, and a non-empty --cache folder is refused (the first pass would not be cold)."""
    from bench import compile_warmup

    R = {"section": "compile-warmup", "smoke": False, "env": {"device": "GPU", "torch": "2.x"},
         "args": {"engine": "compile-graph", "batch": 1, "max_new_tokens": 128, "gamma": 5, "draft": "1b",
                  "methods": "target,specdecode"},
         "passes": {"cold": {"build_s": 9.0, "methods": {
                        "target": {"first_call_s": 80.0, "second_call_s": 0.9, "fxgraph_cache_hit": 0,
                                   "fxgraph_cache_miss": 2},
                        "specdecode": {"first_call_s": 120.0, "second_call_s": 0.7, "fxgraph_cache_hit": 0,
                                       "fxgraph_cache_miss": 4}}},
                    "warm": {"build_s": 9.0, "methods": {
                        "target": {"first_call_s": 12.0, "second_call_s": 0.9, "fxgraph_cache_hit": 2,
                                   "fxgraph_cache_miss": 0},
                        "specdecode": {"first_call_s": 31.0, "second_call_s": 0.7, "fxgraph_cache_hit": 4,
                                       "fxgraph_cache_miss": 0}}}}}
    md = compile_warmup.markdown(R)
    assert "| target | 80.0 | 12.0 | 0.90 | 0 / 2; 2 / 0 | met |" in md
    assert "| specdecode | 120.0 | 31.0 | 0.70 | 0 / 4; 4 / 0 | missed |" in md
    full = tmp_path / "cache"
    full.mkdir()
    (full / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        compile_warmup.main(["--smoke", "--cache", str(full), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r.json").exists()


def test_realistic_targets_are_judged_against_their_spread():
    """A target within the rows' run-to-run spread of its goal is neither met nor missed; one pass says so."""
    from bench import realistic

    assert realistic._target_verdict(realistic._target(1.12, 1.0, "", "", "x", 0.129)).startswith("within the 12.9%")
    assert realistic._target_verdict(realistic._target(0.93, 1.0, "", "", "x", 0.034)) == \
        "missed (beyond the 3.4% spread)"
    assert realistic._target_verdict(realistic._target(1.13, 1.0, "", "", "x", 0.099)) == \
        "**met** (beyond the 9.9% spread)"
    assert realistic._target_verdict(realistic._target(0.041, 0.05, "", "")).endswith("(one pass: noise not judged)")
    assert realistic._target_verdict(realistic._target(None, 1.0, "", "")) == "not measured"
    rows = [{"tokens_per_s_each": [100.0, 110.0]}, {"tokens_per_s_each": [50.0]}, None]
    assert realistic._spread(*rows) == pytest.approx(0.1)
    assert realistic._spread({"tokens_per_s_each": [3.0]}) is None


@pytest.mark.parametrize("script,args,match", [
    ("compile_warmup.py", ["--smoke", "--cache", "{full}"], "is not empty; the first pass must start cold"),
    ("compile_warmup.py", ["--smoke", "--batch", "0"], "must be an integer >= 1, got '0'"),
    ("realistic.py", ["--smoke", "--batch-sizes", "1,2", "--compile-batch-sizes", "4"],
     "--compile-batch-sizes '4' must be among --batch-sizes 1,2"),
    ("assisted_cpu.py", ["--smoke", "--stop-threshold", "1.5"], "--stop-threshold: must be in (0, 1), got '1.5'"),
    ("assisted_cpu.py", ["--smoke", "--stop-gamma", "0"], "--stop-gamma: must be an integer >= 1, got '0'"),
])
def test_bench_scripts_refuse_bad_input_from_the_command_line(tmp_path, script, args, match):
    """Through the command line: exit code 2, one line naming the value, no traceback, nothing written."""
    full = tmp_path / "cache"
    full.mkdir()
    (full / "x").write_text("")
    out = tmp_path / "out" / "r"
    cmd = [sys.executable, str(REPO / "bench" / script), *[a.format(full=full) for a in args], "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), done.stderr
    assert match in lines[-1] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def _profiled(target_s: float, draft_s: float | None = None) -> dict:
    per = {"target": {"seconds": target_s, "calls": 1}}
    if draft_s is not None:
        per["draft"] = {"seconds": draft_s, "calls": 1}
    return {"profile": {"per_role": per}}


def test_calibrate_charges_a_round_its_measured_time_not_the_batch_stragglers():
    """The policy's round overhead comes from the fixed row's wall time per batch round. The batch's extra
    rounds (it runs until its slowest row is done) leave it unchanged; only rows without round counts fall
    back to the mean row's tokens per round, which charges those extra rounds to every round."""
    from bench import realistic

    # target-only: 10 ms forwards, 11 ms wall steps, 128 steps; a fixed round: 6 x 3 ms drafts + a 12 ms block
    # = 30 ms of forwards, plus 4 ms of its own work = 34 ms a round
    tgt = {"tokens_per_s": 8 / 0.011, "wall_s": 128 * 0.011, "rounds": 128, **_profiled(0.010)}
    spec = {**_profiled(0.012, 0.003)}

    def R(rounds: int) -> dict:  # a batch of 8 rows, 3.5 tokens per row and round, ``rounds`` batch rounds
        fixed = {"tokens_per_s": 8 * 128 / (rounds * 0.034), "wall_s": rounds * 0.034, "rounds": rounds,
                 "tokens_per_target_call": 3.5, "acceptance_rate": 0.8, **spec}
        return {"args": {"gamma": 5}, "decode": {"specref/graph/target/b8": tgt,
                                                 "specref/graph/specdecode/1b/b8": fixed}}

    ideal, straggling = realistic.calibrate(R(37), "1b", "specdecode", 8), realistic.calibrate(R(44), "1b",
                                                                                                 "specdecode", 8)
    assert ideal["c"] == pytest.approx(0.3) and ideal["verify_slope"] == pytest.approx(0.04)
    assert ideal["plain_overhead"] == pytest.approx(0.1)
    # 34 ms = 3.4 forwards of 10 ms; the forwards are 6 c + 1 + 5 slope = 3.0: 0.4 of the round's own work
    assert ideal["round_overhead"] == pytest.approx(0.4) and straggling["round_overhead"] == pytest.approx(0.4)
    old = R(44)
    for row in old["decode"].values():
        row.pop("rounds", None)
    assert realistic.calibrate(old, "1b", "specdecode", 8)["round_overhead"] > 0.4 + 0.5



def test_straggler_sim_runs_the_policy_itself_and_refuses_bad_options(tmp_path, capsys):
    from bench import straggler_sim

    out = tmp_path / "sim.json"
    assert straggler_sim.main(["--batches", "8", "--acceptances", "0.8,0.0", "--calls", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["acceptance"]) for r in rows] == [(8, 0.8), (8, 0.0)]
    for r in rows:
        assert r["vs_plain"]["plain"] == 1.0 and r["mean_g"]["fixed"] == 5.0 and r["mean_g"]["plain"] == 0.0
    # nothing is ever accepted: drafting only loses, and both policies turn to plain steps but for their probes
    assert rows[1]["vs_plain"]["fixed"] < 0.6 and rows[1]["mean_g"]["policy"] < 0.2
    for bad, match in ((["--batches", "16"], "no calibrated costs"), (["--acceptances", "1.5"], "must be in"),
                       (["--calls", "0"], "integer >= 1")):
        with pytest.raises(SystemExit) as err:
            straggler_sim.main(bad)
        assert err.value.code == 2 and match in capsys.readouterr().err


def test_policy_path_diagnostic_times_both_paths_twice(capsys):
    from bench import policy_path

    assert policy_path.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for name in ("fixed g5", "policy const 5", "fixed g5 again", "policy const 5 again"):
        assert f"== {name}: " in out
    assert "-- per round: fixed g5 vs policy const 5" in out


@pytest.mark.parametrize("script,args,match", [
    ("straggler_sim.py", ["--batches", "16"], "no calibrated costs for [16]; allowed: [1, 8, 32, 64]"),
    ("straggler_sim.py", ["--acceptances", "0.8,1.5"], "--acceptances must be in [0, 1], got (0.8, 1.5)"),
    ("straggler_sim.py", ["--calls", "0"], "must be an integer >= 1, got '0'"),
    ("policy_path.py", [], "needs a CUDA GPU (or --smoke)"),
])
def test_model_free_and_gpu_bench_scripts_refuse_bad_input_from_the_command_line(tmp_path, script, args, match):
    """Through the command line: exit code 2, the usage line and one error line naming the value, no traceback,
    nothing written (``--json`` names a file the refused run must not create)."""
    import torch

    if script == "policy_path.py" and torch.cuda.is_available():
        pytest.skip("refuses only where there is no GPU")
    out = tmp_path / "out" / "sim.json"
    extra = ["--json", str(out)] if script == "straggler_sim.py" else []
    cmd = [sys.executable, str(REPO / "bench" / script), *args, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("usage:") and match in lines[-1] and "Traceback" not in done.stderr, done.stderr
    assert not out.exists() and not (tmp_path / "out").exists()
