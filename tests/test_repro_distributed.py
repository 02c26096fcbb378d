"""Data-parallel sweeps (specref.repro.distributed): the merged CSV equals a single-process run's.

The end-to-end test launches two processes with torchrun over gloo on the CPU, on the zoo translation
pair's tiny random-init stand-in (batches of 2, several seeds and methods, so work items split decodes
across ranks), and compares every row with an in-process single-process ``reproduce`` of the same sweep:
same rows, same order, same values, except the wall-clock and provenance columns.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specref.repro.backend import DecodeOutput, DecodeRequest
from specref.repro.distributed import assign, merge_outputs, request_key
from specref.repro.runner import RunInfo, Setting, plan_points, planned_decodes, run_points
from specref.repro.store import COLUMNS, PointStore

REPO = Path(__file__).resolve().parents[1]
WALL = ("latency_wall", "wall_s", "baseline_wall_s", "cost_ratio_measured", "run_id", "time_utc", "row_crc32")
STABLE = [c for c in COLUMNS if c not in WALL]
ARGS = ["--standin", "--max-examples", "5", "--max-new-tokens", "4", "--batch-size", "2", "--methods",
        "specdecode,token_v3,lossy", "--alphas", "token_v3=0.5;lossy=0.3", "--seed", "0,1", "--no-progress",
        "--no-plot", "--device", "cpu"]


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_two_process_sweep_equals_single_process(tmp_path):
    import argparse

    from specref.options import add_reproduce_arguments
    from specref.repro.reproduce import config_from_args, reproduce
    from specref.repro.setups import select_setups

    p = argparse.ArgumentParser()
    add_reproduce_arguments(p)
    args = p.parse_args([*ARGS, "--out", str(tmp_path / "single")])
    setup = select_setups(args.task, args.pair, args.config, args.standin)[0]
    single = reproduce(setup, tmp_path / "single", config_from_args(args), device="cpu")

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "specref.repro.distributed", *ARGS, "--out", str(tmp_path / "dp"),
           "--timing-json", str(tmp_path / "timing.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows_dp = PointStore(tmp_path / "dp" / setup.folder / "points.csv").read()
    rows_1 = PointStore(tmp_path / "single" / setup.folder / "points.csv").read()
    assert len(rows_1) == len(single.rows) == 10  # (target, draft, specdecode, token_v3, lossy) x 2 seeds
    assert [r["method"] for r in rows_dp] == [r["method"] for r in rows_1]
    for a, b in zip(rows_dp, rows_1):
        diff = [c for c in STABLE if not _same(a[c], b[c])]
        assert not diff, {c: (a[c], b[c]) for c in diff}
    import json

    timing = json.loads((tmp_path / "timing.json").read_text())[0]
    assert timing["world"] == 2 and len(timing["ranks"]) == 2
    assert all(r["items"] > 0 for r in timing["ranks"])  # both ranks decoded something
    assert timing["batches_per_decode"] == 3


# ---- pieces ---------------------------------------------------------------------------------------------


class Ex:
    def __init__(self, i):
        self.id = str(i)


class Task:
    name, metric_name = "t", "acc"

    def score(self, predictions, examples):
        return {"acc": 100.0 * sum(p == "ok" for p in predictions) / len(predictions)}


class Recorder:
    device = "fake"

    def __init__(self):
        self.calls = []

    def cost_ratio(self):
        return 0.5, "fake"

    def warmup(self):
        pass

    def decode(self, req, examples):
        self.calls.append(request_key(req))
        n = len(examples)
        return DecodeOutput(["ok"] * n, 3 * n, n, 2 * n, n, 0.5 * n, 0.1 * n, n, 0.01 * n)


def test_planned_decodes_is_what_run_points_decodes(tmp_path):
    info = RunInfo(task=Task(), pair="p", split="test", examples=[Ex(i) for i in range(4)], max_new_tokens=4,
                   batch_size=2, cost_ratio=0.5, cost_ratio_source="fake")
    pts = plan_points(["chow", "token_v3", "token_cascade"], [Setting(1.0, 3), Setting(1.0, 5), Setting(0.0, 5)],
                      [0, 1])
    store = PointStore(tmp_path / "p.csv")
    # a partly filled store: resume skips stored rows but still re-decodes each pending group's baseline
    run_points(Recorder(), store, info, pts[: len(pts) // 3], progress=False)
    from specref.repro.runner import request_for

    planned = [request_key(request_for(p, info)) for p in planned_decodes(store.keys(), info, pts)]
    rec = Recorder()
    run_points(rec, store, info, pts, progress=False)
    assert rec.calls == planned and len(planned) > 0


def test_assign_balances_longest_first_and_is_deterministic():
    costs = [5, 1, 1, 4, 2, 3]
    owner = assign(costs, 2)
    assert owner == assign(costs, 2)
    loads = [sum(c for c, o in zip(costs, owner) if o == r) for r in range(2)]
    assert sorted(loads) == [8, 8]
    assert assign([1.0] * 3, 1) == [0, 0, 0]


def test_merge_sums_in_batch_order_and_places_predictions():
    parts = [DecodeOutput(["a", "b"], 2, 2, 4, 1, 0, 0.1, 2, 0.5), DecodeOutput(["c"], 1, 1, 2, 1, 1, 0.2, 1, 0.25)]
    out = merge_outputs(parts, [[2, 0], [1]], 3)
    assert out.predictions == ["b", "c", "a"]
    assert (out.tokens, out.target_calls, out.draft_calls, out.rejected) == (3, 3, 6, 1)
    assert out.deferrals == 0.0 + 0.1 + 0.2 and out.wall_s == 0.75


@pytest.mark.parametrize("field", ["alpha", "options"])
def test_request_key_distinguishes_requests(field):
    a = DecodeRequest("token_v3", alpha=0.5, options={"bonus": "pi"})
    b = DecodeRequest("token_v3", alpha=0.6 if field == "alpha" else 0.5,
                      options={"bonus": "target"} if field == "options" else {"bonus": "pi"})
    assert request_key(a) != request_key(b)
    assert request_key(a) == request_key(DecodeRequest("token_v3", alpha=0.5, options={"bonus": "pi"}))


def test_reproduce_procs_flag_relaunches_through_torchrun(tmp_path, capsys):
    """`specref reproduce --procs 2` gives the rows of a one-process run (wall-clock columns aside)."""
    from specref.cli import main
    from specref.cli.reproduce import _without_procs

    assert _without_procs(["reproduce", "--procs", "2", "--standin", "--procs=3", "--out", "x"]) == [
        "--standin", "--out", "x"]
    assert main(["reproduce", *ARGS, "--out", str(tmp_path / "one")]) == 0
    assert main(["reproduce", "--procs", "2", *ARGS, "--out", str(tmp_path / "two")]) == 0
    folder = next(p.name for p in (tmp_path / "one").iterdir() if (p / "points.csv").is_file())
    rows_1 = PointStore(tmp_path / "one" / folder / "points.csv").read()
    rows_2 = PointStore(tmp_path / "two" / folder / "points.csv").read()
    assert len(rows_1) == len(rows_2) == 10
    for a, b in zip(rows_2, rows_1):
        assert all(_same(a[c], b[c]) for c in STABLE)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # refused by the argument parser, before anything runs
        main(["reproduce", "--procs", "0", *ARGS, "--out", str(tmp_path / "bad")])
    assert e.value.code == 2
    assert "--procs: must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    from specref.cli import build_parser
    from specref.cli.reproduce import run

    args = build_parser().parse_args(["reproduce", "--procs", "2", *ARGS, "--out", str(tmp_path / "direct")])
    with pytest.raises(ValueError, match="re-launches the command line"):  # called without specref.cli.main
        run(args)
