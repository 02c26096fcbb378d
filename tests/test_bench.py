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
                     "--dp-batch", "2", "--dp-new-tokens", "4"])
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
    bw = R["bandwidth_1b"]
    assert bw["floor_ms"] > 0 and all(v["x_floor"] > 0 for v in bw["engines"].values())
    dp = R["dp"]
    assert dp["rows_equal"] is True and dp["speedup_decode"] > 0
    assert set(R["targets"]) >= {"specdecode_vs_target_only_b1", "specdecode_vs_hf_assisted_b1",
                                 "target_forward_x_floor_1b_b1", "dp_2gpu_speedup"}
    for heading in ("Decoding throughput", "outside the model forwards", "bandwidth floor", "Data-parallel",
                    "Issue 7 targets"):
        assert heading in md


def test_cli_exposes_the_suite(capsys):
    from specref.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--smoke" in out and "--engines" in out and "--budget-s" in out
