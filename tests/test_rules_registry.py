"""A rule added with ``rules.register`` (one class + one call, in tests/plugin_gap_rule.py, as a user's plugin
module would be) works by name everywhere a built-in rule does: ``rules.get``, ``make_decoder`` (reference
and fused verification, sampling exactly its law), a ``reproduce`` sweep over its registered grid, offline
``evaluate`` (the same decisions as at decode time), and the command line through ``--plugin``."""

from __future__ import annotations

import csv
import importlib
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import pairs, verify_blocks
from test_decode_exact import LEVEL, SEED, N, combined_gof, report, rule_refs

from specref import plugins, rules
from specref.decode import all_methods, make_decoder
from specref.decode.fused import fused_kind, fused_verify
from specref.decode.testing import TOY_PROMPTS, ragged_batch, toy_pair
from specref.dists import tv
from specref.logs.evaluate import check_methods, evaluate
from specref.logs.offline import cascade_decisions
from specref.position_summary import summarize
from specref.repro.methods import get_method
from specref.verify import BlockUniforms, verify_block

PLUGIN = "plugin_gap_rule"
ALPHA = 0.8  # the gap rule defers at a middling rate on the toy llama pair (neither end's law)


def _forget() -> None:
    if "gap" in rules.NAMES():
        rules.unregister("gap")
    sys.modules.pop(PLUGIN, None)
    plugins._loaded.discard(PLUGIN)


@pytest.fixture
def unregistered():
    """No ``gap`` rule before the test, none after (a registration must not leak into other tests)."""
    _forget()
    yield
    _forget()


@pytest.fixture
def gap(unregistered):
    """The plugin imported: ``gap`` registered for this test only."""
    return importlib.import_module(PLUGIN)


# ---- one registration reaches every consumer ------------------------------------------------------------


def test_unknown_before_registration_and_known_everywhere_after(unregistered):
    draft, target = toy_pair("llama")
    with pytest.raises(ValueError, match="unknown method 'gap'"):
        make_decoder(draft, target, "gap", alpha=ALPHA)
    with pytest.raises(ValueError, match="unknown method 'gap'"):
        get_method("gap")
    with pytest.raises(ValueError, match="unknown method 'gap'"):
        check_methods(["gap"])

    mod = importlib.import_module(PLUGIN)
    assert isinstance(rules.get("gap", alpha=ALPHA), mod.GapRule)
    assert "gap" in all_methods() and "gap" in rules.NAMES()
    assert make_decoder(draft, target, "gap", alpha=ALPHA).rule.alpha == ALPHA
    spec = get_method("gap")
    assert (spec.label, spec.quick, spec.full) == ("SpecCascade [Gap]", (0.5, 1.0), (0.0, 0.5, 1.0, 2.0))
    assert check_methods(["gap", "chow"]) == ("gap", "chow")
    with pytest.raises(ValueError, match="gap needs alpha .defer iff max q < alpha max p"):
        rules.get("gap")


def test_registration_refuses_clashes_and_bad_names(gap):
    for name in ("gap", "chow", "bild", "seq_cascade", "target", "oracle"):
        with pytest.raises(ValueError, match="already (registered|exists)"):
            rules.register(name, gap.GapRule)
    with pytest.raises(ValueError, match="identifier"):
        rules.register("my rule", gap.GapRule)
    with pytest.raises(ValueError, match="callable"):
        rules.register("other", 3)
    with pytest.raises(ValueError, match="NaN"):
        rules.register("other", gap.GapRule, quick=(float("nan"),))
    with pytest.raises(ValueError, match="built-in"):
        rules.unregister("chow")
    assert "other" not in rules.NAMES()


# ---- decoder: exact law, on the fused and on the reference verification ---------------------------------


def _sample(rule, fused: bool) -> torch.Tensor:
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, rule, gamma=2) if isinstance(rule, rules.Rule) else \
        make_decoder(draft, target, rule, alpha=ALPHA, gamma=2)
    assert dec._fused_kind == "position"  # a decide_position rule takes the fused path by itself
    if not fused:
        dec._fused_kind = None  # every block through verify_block
    ids, mask = ragged_batch(TOY_PROMPTS, N)
    return dec.generate(ids, mask, max_new_tokens=3, temperature=1.0, seed=SEED).sequences


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_decoder_samples_the_registered_rules_exact_law(gap, fused):
    refs = rule_refs("llama", rules.get("gap", alpha=ALPHA))
    res = combined_gof(_sample("gap", fused), refs)
    report(f"llama gap alpha={ALPHA} fused={fused}", res)
    assert res.p_value >= LEVEL, res


class _Flipped:
    """Negative control: the rule with its decision flipped, decoded and held against the true rule's law."""

    @staticmethod
    def build(gap_module):
        class FlippedGap(gap_module.GapRule):
            def decide_position(self, stats):
                return ~super().decide_position(stats)

        return FlippedGap(alpha=ALPHA)


@pytest.mark.slow
def test_negative_control_a_flipped_decision_is_rejected(gap):
    refs = rule_refs("llama", rules.get("gap", alpha=ALPHA))
    res = combined_gof(_sample(_Flipped.build(gap), fused=True), refs)
    report("llama gap flipped (negative control)", res)
    assert res.p_value < LEVEL, res


@settings(max_examples=100, deadline=None)
@given(verify_blocks(max_vocab=5))
def test_fused_verification_is_bitwise_the_reference_verifier(block):
    mod = sys.modules.get(PLUGIN) or importlib.import_module(PLUGIN)
    try:
        rule = mod.GapRule(alpha=ALPHA)
        drafts, q, p, q_rule, p_rule, u = block
        assert fused_kind(rule) == "position"
        ref = verify_block(drafts, q, p, rule, q_rule=q_rule, p_rule=p_rule, bonus="pi",
                           uniforms=BlockUniforms(u.accept, u.sample), validate=False)
        out = fused_verify(drafts, q, p, rule, q_rule, p_rule, "pi", u.accept, u.sample)
        assert torch.equal(out.accepted, ref.accepted) and torch.equal(out.tokens, ref.tokens)
        assert torch.equal(out.accept_prob, ref.accept_prob)
    finally:
        _forget()


# ---- offline evaluation: the decode-time decisions, from the logged summaries ---------------------------


@settings(max_examples=300, deadline=None)
@given(pairs(max_rows=4), st.sampled_from([0.0, 0.5, 0.8, 1.0, 2.0]), st.sampled_from([torch.float32, torch.float64]))
def test_offline_evaluation_reads_the_decoders_decisions(qp, alpha, dtype):
    """The registered rule's offline decisions (from the logged q_max, p_max, tv) are the decoder's decisions
    on the full distributions, and the evaluation table's rates are the live rule's: mean defer and mean
    TV(pi, q) (the rejection rate it prices, Lemma 3). Zeros, one-hots, ties and p = q come from ``pairs``."""
    importlib.import_module(PLUGIN)  # idempotent: hypothesis examples share one registration
    try:
        q, p = (x.to(dtype) for x in qp)
        live = rules.get("gap", alpha)(q, p)
        s = summarize(q, p, top_k=2, reference=torch.zeros(q.shape[:-1], dtype=torch.long))
        offline = cascade_decisions("gap", s, alpha)
        assert torch.equal(offline, live.defer.bool())
        row = next(r for r in evaluate(s, [alpha], methods=["gap"]) if r["loss"] == "argmax")
        assert row["deferral_rate"] == pytest.approx(float(live.defer.double().mean()), abs=1e-12)
        assert row["rejection_rate"] == pytest.approx(float(tv(live.pi, q).double().mean()), abs=1e-6)
    finally:
        _forget()


def test_negative_control_offline_columns_read_wrongly_are_caught(gap):
    """The equality above rejects an offline evaluation that reads the wrong column (p_max for q_max) or the
    tempered pair's maxima: on random positions both disagree with the decoder somewhere."""
    g = torch.Generator().manual_seed(SEED)
    q = torch.softmax(2 * torch.randn(2000, 6, generator=g), -1)
    p = torch.softmax(2 * torch.randn(2000, 6, generator=g), -1)
    live = rules.get("gap", ALPHA)(q, p).defer.bool()
    s = summarize(q, p, top_k=2, reference=torch.zeros(2000, dtype=torch.long))
    assert torch.equal(cascade_decisions("gap", s, ALPHA), live)
    wrong_column = cascade_decisions("gap", {**s, "q_max": s["p_max"]}, ALPHA)
    hot = summarize(torch.softmax(q.log() / 0.5, -1), torch.softmax(p.log() / 0.5, -1), top_k=2,
                    reference=torch.zeros(2000, dtype=torch.long))
    tempered = cascade_decisions("gap", hot, ALPHA)
    for wrong in (wrong_column, tempered):
        assert int((wrong != live).sum()) > 20


def test_offline_refuses_rules_that_need_the_full_distributions(unregistered):
    class PeakedTokens(rules.Rule):
        name, token_level, takes_alpha = "peaked", True, True

        def decide(self, q_rule, p_rule, q, p, features=None):
            return q_rule < self.alpha

    class OwnDecide(rules.Rule):
        name, takes_alpha = "own", True

        def decide(self, q_rule, p_rule, q, p, features=None):
            return q_rule[..., 0] < self.alpha

    rules.register("peaked", PeakedTokens, quick=(0.1,))
    rules.register("own", OwnDecide, quick=(0.1,))
    try:
        q = torch.softmax(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), -1)
        s = summarize(q, q.flip(-1), top_k=2, reference=torch.zeros(8, dtype=torch.long))
        for name in ("peaked", "own"):
            with pytest.raises(ValueError, match="decides from the full distributions"):
                evaluate(s, [0.5], methods=[name])
    finally:
        rules.unregister("peaked")
        rules.unregister("own")


# ---- reproduce: a sweep over the registered grid ---------------------------------------------------------


def test_reproduce_sweeps_the_registered_grid(gap, tmp_path):
    from specref.repro.reproduce import ReproConfig, reproduce
    from specref.repro.setups import zoo_setup

    setup = zoo_setup("bible-en-es-t5", standin=True)
    cfg = ReproConfig(methods=("specdecode", "gap"), progress=False, plots=False)
    res = reproduce(setup, tmp_path, cfg)
    got = sorted((r["alpha"], r["label"]) for r in res.rows if r["method"] == "gap")
    assert got == [(0.5, "SpecCascade [Gap]"), (1.0, "SpecCascade [Gap]")]
    assert "SpecCascade [Gap]" in (res.out_dir / "summary.md").read_text()


# ---- the command line: --plugin ----------------------------------------------------------------------------


def _one_line_error(capsys, argv, *needles):
    from specref.cli import main

    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]


def test_cli_generate_and_evaluate_with_a_plugin(unregistered, tmp_path, capsys):
    import json

    from specref.cli import main
    from specref.logs.synthetic import synthetic_logs, write_summary

    base = ["generate", "--pair", "arith-llama", "--prompt", "Ann has 3 apples. How many?", "--max-new-tokens",
            "6", "--rule", "gap", "--alpha", "0.8", "--json"]
    _one_line_error(capsys, base, "unknown --rule 'gap'", "--plugin")
    _one_line_error(capsys, [*base, "--plugin", "no_such_plugin_module"], "no_such_plugin_module")
    assert main([*base, "--plugin", PLUGIN]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] and out["texts"]

    s, layout = synthetic_logs(6, positions=4, vocab=12, top_k=4, seed=1)
    logs = write_summary(tmp_path / "logs", s, layout)
    _forget()
    assert main(["evaluate", "--logs", str(logs), "--methods", "gap,chow", "--alphas", "0.5", "--plugin", PLUGIN,
                 "--out", str(tmp_path / "eval")]) == 0
    with open(tmp_path / "eval" / "offline_eval.csv", newline="") as fh:
        methods = {r["method"] for r in csv.DictReader(fh)}
    assert methods == {"gap", "chow"}


def test_cli_reproduce_and_torchrun_workers_with_a_plugin(unregistered, tmp_path, capsys):
    """`specref reproduce --plugin` sweeps the registered grid; a torchrun worker (here the one-process
    case of specref.repro.distributed) loads the plugin itself, as every rank is a new process."""
    from specref.repro import distributed
    from specref.repro.store import PointStore

    base = ["--pair", "bible-en-es-t5", "--standin", "--max-examples", "2", "--max-new-tokens", "3",
            "--methods", "specdecode,gap", "--no-progress", "--no-plot", "--device", "cpu"]
    _one_line_error(capsys, ["reproduce", *base, "--out", str(tmp_path / "none")], "unknown method 'gap'", "--plugin")
    for name, run in (("cli", lambda a: _main(["reproduce", *a])), ("worker", distributed.main)):
        out = tmp_path / name
        assert run([*base, "--plugin", PLUGIN, "--out", str(out)]) == 0
        _forget()
        points = next(out.glob("*/points.csv"))
        got = sorted({(r["method"], float(r["alpha"])) for r in PointStore(points).read() if r["method"] == "gap"})
        assert got == [("gap", 0.5), ("gap", 1.0)]


def _main(argv):
    from specref.cli import main

    return main(argv)
