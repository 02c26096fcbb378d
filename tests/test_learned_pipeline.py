"""The whole learned-deferral pipeline on CPU with a tiny random-init pair:
teacher-forced logging -> LightningCLI training (one epoch, YAML config) -> export (safetensors + JSON)
-> offline evaluation (`specref evaluate`) -> decoding with the learned rule through the real decoder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("transformers")

from specref import heads, rules  # noqa: E402
from specref.cli import main as specref_main  # noqa: E402
from specref.decode import make_decoder  # noqa: E402
from specref.decode.testing import tiny_pair  # noqa: E402
from specref.logs import open_logs  # noqa: E402
from specref.logs.teacher import LogExample, log_teacher_forced  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "training" / "deferral" / "configs" / "smoke.yaml"
VOCAB, GAMMA = 32, 3


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Log a tiny llama pair on prompts whose references the TARGET wrote, train a cascade and a token head
    with the LightningCLI smoke config, and return everything the tests below use."""
    from training.deferral.cli import cli_main

    tmp = tmp_path_factory.mktemp("pipeline")
    draft, target = tiny_pair("llama", vocab=VOCAB, seed=0, draft_noise=0.6, peak=3.0)
    g = torch.Generator().manual_seed(0)
    prompts = [tuple(torch.randint(VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist())
               for _ in range(48)]
    # References: target-only samples, so "the truth" is the large model's behaviour, as in distillation.
    tgt = make_decoder(draft, target, "target")
    examples = []
    for i, prompt in enumerate(prompts):
        out = tgt.generate(torch.tensor([prompt]), max_new_tokens=10, seed=[1000 + i])
        examples.append(LogExample(i, f"ex{i}", prompt, tuple(out.token_lists()[0])))
    logs = log_teacher_forced(draft, target, examples, tmp / "logs", top_k=8, batch_size=16, examples_per_shard=16,
                              progress=False)
    runs = {}
    for kind, extra in (("cascade", []), ("token", ["--model.kind=token", "--model.candidates=4"])):
        root = tmp / f"run-{kind}"
        cli_main(["fit", "--config", str(SMOKE), f"--data.logs={logs}", f"--trainer.default_root_dir={root}",
                  *extra])
        runs[kind] = root
    return {"draft": draft, "target": target, "logs": logs, "runs": runs, "examples": examples, "tmp": tmp}


@pytest.mark.parametrize("kind", ["cascade", "token"])
def test_cli_training_exports_a_loadable_head(pipeline, kind):
    root = pipeline["runs"][kind]
    assert (root / "config.yaml").is_file()  # LightningCLI saved the resolved config
    assert list((root / "checkpoints").glob("best*.ckpt"))
    head = heads.load(root / "head")
    assert head.kind == kind and head.info["trained_with"] == "lightning" and head.info["checkpoint"]
    logs = open_logs(pipeline["logs"])
    assert logs.finished and logs.num_rows == sum(len(e.completion) for e in pipeline["examples"])


@pytest.mark.parametrize("kind", ["cascade", "token"])
def test_decode_with_the_learned_rule(pipeline, kind):
    draft, target = pipeline["draft"], pipeline["target"]
    head = heads.load(pipeline["runs"][kind] / "head")
    prompts = torch.tensor([list(pipeline["examples"][i].prompt[:2]) for i in range(6)])
    seeds = list(range(6))

    def run(rule):
        dec = make_decoder(draft, target, rule, gamma=GAMMA)
        return dec.generate(prompts, max_new_tokens=12, seed=seeds)

    out = run(rules.get("learned", head=head, alpha=0.3))
    assert out.sequences.shape == (6, 12) and bool((out.lengths == 12).all())
    assert bool(((out.sequences >= 0) & (out.sequences < VOCAB)).all())
    rate = float(out.stats.deferred.sum() / out.stats.defer_positions.sum())
    assert 0.0 <= rate <= 1.0
    # By name through make_decoder, as the repro harness calls it.
    again = make_decoder(draft, target, "learned", alpha=0.3, gamma=GAMMA, head=head)
    assert torch.equal(again.generate(prompts, max_new_tokens=12, seed=seeds).sequences, out.sequences)
    # The limits: alpha -> +inf never defers (pi = q, exactly draft-only), alpha -> -inf always defers.
    keep = run(rules.get("learned", head=head, alpha=1e9))
    assert torch.equal(keep.sequences, run(rules.get("draft")).sequences)
    assert float(keep.stats.deferred.sum()) == 0.0
    defer_all = run(rules.get("learned", head=head, alpha=-1e9))
    if kind == "cascade":
        assert torch.equal(defer_all.sequences, run(rules.get("specdecode")).sequences)
    else:
        positions = float(defer_all.stats.defer_positions.sum())
        assert float(defer_all.stats.deferred.sum()) == pytest.approx(positions, rel=1e-5)


def test_offline_evaluation_cli(pipeline, tmp_path):
    runs = pipeline["runs"]
    out = tmp_path / "eval"
    code = specref_main(["evaluate", "--logs", str(pipeline["logs"]), "--holdout", "0.3",
                         "--head", f"cascade={runs['cascade'] / 'head'}", "--head", f"token={runs['token'] / 'head'}",
                         "--alphas", "0,0.2,0.5", "--out", str(out)])
    assert code == 0
    with open(out / "offline_eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = {r["method"] for r in rows}
    assert {"cascade", "token", "opt", "token_v3", "oracle", "chow", "diff"} <= methods
    for r in rows:
        assert float(r["rejection_rate"]) >= 0 and 0 <= float(r["deferral_rate"]) <= 1 + 1e-9
    oracle = {(r["alpha"], r["loss"]): float(r["l_spec"]) for r in rows if r["method"] == "oracle"}
    for r in rows:
        if r["method"] == "cascade":
            assert float(r["l_spec"]) >= oracle[(r["alpha"], r["loss"])] - 1e-9
    assert (out / "offline_eval_sampled.png").stat().st_size > 1000


def test_sklearn_baseline_cli_exports_a_decodable_head(pipeline, tmp_path):
    from training.deferral.baselines import main

    assert main(["--logs", str(pipeline["logs"]), "--model", "logreg", "--out", str(tmp_path / "lr")]) == 0
    head = heads.load(tmp_path / "lr")
    assert head.info["trained_with"] == "scikit-learn logreg"
    dec = make_decoder(pipeline["draft"], pipeline["target"], "learned", alpha=0.2, gamma=GAMMA, head=head)
    out = dec.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, seed=0)
    assert int(out.lengths[0]) == 5


def test_decode_with_a_head_that_reads_hidden_states(pipeline):
    """The decoder passes draft/target hidden states to heads that ask for them (``wants_hidden``)."""
    from specref.heads import CascadeHead, FeatureSpec

    spec = FeatureSpec("cascade", k=4, hidden=("draft_hidden", "target_hidden"), hidden_dims=(16, 16))
    torch.manual_seed(0)
    head = CascadeHead(spec, body={"type": "mlp", "in_dim": spec.dim, "out_dim": 2, "hidden": [8]}).eval()
    seen = []
    estimate = head.estimate

    def spy(q_rule, p_rule, q=None, p=None, features=None):
        seen.append({k: v.shape for k, v in (features or {}).items()})
        return estimate(q_rule, p_rule, q, p, features)

    head.estimate = spy
    dec = make_decoder(pipeline["draft"], pipeline["target"], "learned", alpha=0.1, gamma=GAMMA, head=head)
    out = dec.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), max_new_tokens=6, seed=0)
    assert int(out.lengths.min()) == 6
    assert seen and seen[0]["draft_hidden"][-1] == 16 and seen[0]["target_hidden"][1] == GAMMA + 1
