"""A target sharded over processes (specref.sharding): the same tokens and rows as one process, real shards,
and one-line refusals for what is not supported.

The end-to-end tests launch two gloo processes on the CPU through the command line's own re-launch
(``--tp-size 2``), with the zoo's Llama pair (its target: 4 heads, intermediate size divisible by 2). Equal
tokens on every row and seed is a stronger check of the sampled law than a chi-square test: the decoder and
its uniforms are untouched, only the target's forward is split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from specref import sharding
from specref.cli import main

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Tom has 3 apples and buys 4 more. How many?", "A box holds 12 pens; 5 are taken.",
           "Sam reads 7 pages a day for 3 days.", "There are 20 birds; 8 fly away."]


def _generate(tp: int, capsys) -> dict:
    argv = ["generate", "--pair", "arith-llama", "--device", "cpu", "--tp-size", str(tp), "--seed", "3",
            "--max-new-tokens", "24", "--json", "--rule", "token_v3", "--alpha", "0.3"]
    for p in PROMPTS:
        argv += ["--prompt", p]
    if tp == 1:
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)
    # a subprocess: the re-launched ranks print on the real stdout, which capsys does not see
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "specref", *argv], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_generate_sharded_over_two_processes_gives_the_same_tokens(capsys):
    one = _generate(1, capsys)
    two = _generate(2, capsys)
    assert two["tokens"] == one["tokens"]
    assert two["texts"] == one["texts"]
    assert two["stats"]["tp_size"] == 2 and "tp_size" not in one["stats"]
    for key in ("tokens", "draft_forwards", "target_forwards", "rejection_rate", "deferral_rate"):
        assert two["stats"][key] == one["stats"][key], key


def test_reproduce_sharded_rows_equal_one_process(tmp_path):
    from specref.repro.store import PointStore

    args = ["--pair", "arith-llama", "--device", "cpu", "--max-examples", "6", "--max-new-tokens", "24",
            "--methods", "specdecode,opt", "--alphas", "0.1", "--no-plot", "--no-progress"]
    assert main(["reproduce", *args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "specref", "reproduce", "--tp-size", "2", *args, "--out",
                           str(tmp_path / "two")], capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sharded over 2 ranks" in proc.stdout
    rows_1 = PointStore(tmp_path / "one" / "arith-llama" / "points.csv").read()
    rows_2 = PointStore(tmp_path / "two" / "arith-llama" / "points.csv").read()
    assert len(rows_1) == len(rows_2) == 4  # target, draft, specdecode, opt
    wall = {"latency_wall", "wall_s", "baseline_wall_s", "cost_ratio_measured", "run_id", "time_utc", "row_crc32"}
    for a, b in zip(rows_1, rows_2):
        assert {k: v for k, v in a.items() if k not in wall} == {k: v for k, v in b.items() if k not in wall}


def test_the_target_is_really_split(tmp_path):
    """Each rank holds half of every attention projection (a 'sharded' run that loaded the whole model on
    each rank would pass the equality tests above)."""
    script = tmp_path / "shard.py"
    script.write_text(
        "import os\n"
        "from specref.loading import load_model\n"
        "m = load_model('arith-llama:target', 'target', 'cpu', 'float32', tp_size=2)\n"
        "w = m.model.layers[0].self_attn.q_proj.weight\n"
        "print(os.environ['RANK'], tuple(w.to_local().shape), tuple(w.shape))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line[:1] in "01")
    assert lines == ["0 (128, 256) (256, 256)", "1 (128, 256) (256, 256)"]


@pytest.mark.parametrize("argv, message", [
    (["generate", "--pair", "bible-en-es-t5", "--tp-size", "2", "--prompt", "x"],
     "no tensor-parallel plan"),
    (["generate", "--pair", "arith-llama", "--tp-size", "2", "--engine", "graph", "--prompt", "x"],
     "--engine graph with --tp-size 2"),
    (["generate", "--pair", "arith-llama", "--tp-size", "3", "--prompt", "x"],
     "num_attention_heads is 4, which does not split into 3"),
    (["reproduce", "--pair", "arith-llama", "--tp-size", "2", "--procs", "2"], "not both"),
    (["reproduce", "--standin", "--tp-size", "2"], "--standin builds its models"),
    (["reproduce", "--task", "translation", "--tp-size", "2"], "no tensor-parallel plan"),
])
def test_unsupported_combinations_are_one_line_errors(argv, message, capsys, tmp_path):
    out = tmp_path / "out"
    extra = ["--out", str(out)] if argv[0] == "reproduce" else []
    assert main([*argv, "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(out.rglob("*.csv"))


def test_checks_on_their_own():
    llama = SimpleNamespace(model_type="llama", base_model_tp_plan={"x": "colwise"}, num_attention_heads=8,
                            num_key_value_heads=2, intermediate_size=64)
    sharding.check_tp_config(llama, 2)
    with pytest.raises(ValueError, match="num_key_value_heads is 2"):
        sharding.check_tp_config(llama, 4)
    with pytest.raises(ValueError, match="no tensor-parallel plan"):
        sharding.check_tp_config(SimpleNamespace(model_type="gpt2", base_model_tp_plan=None), 2)
    sharding.check_tp_config(SimpleNamespace(model_type="t5", is_encoder_decoder=True), 1)  # 1 = not sharded
    sharding.check_tp_engine("graph", 1)
    for engine in sharding.TP_ENGINES:
        sharding.check_tp_engine(engine, 2)
    with pytest.raises(ValueError, match="inside a torchrun of 1"):
        sharding.check_child(2)
    with pytest.raises(ValueError, match="each process its own GPU"):
        sharding.check_tp_device("cuda:1", 2)
