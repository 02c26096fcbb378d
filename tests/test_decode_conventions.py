"""The conventions a user needs to predict the decoder's output (docs/decoding.md, "Conventions").

transformers' generation settings (GenerationConfig and its keywords), the default EOS ids, the cost ratio
``c`` and where it came from, one alpha convention for every rule (required / refused / degenerate), the
KV-memory bound, and the tie-breaking and filter-order rules of sampling.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from transformers import GenerationConfig

from specref import rules
from specref.cli import main
from specref.decode import make_decoder
from specref.decode.step_cost import step_cost_ratio
from specref.decode.testing import tiny_pair, tiny_tokenizer
from specref.defaults import DEFAULT_MAX_NEW_TOKENS
from specref.dists import probs_from_logits

IDS = torch.tensor([[0, 3, 4, 5], [2, 6, 7, 3]])
MASK = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])


@pytest.fixture(scope="module")
def pair():
    return tiny_pair("llama", vocab=8, init=0.3, draft_noise=0.3, context=128)


def _row(dec, **kw):
    """Row 0's tokens (seed 5, T = 1): stopping at EOS only cuts this output short."""
    return dec.generate(IDS[:1], MASK[:1], max_new_tokens=16, seed=5, **kw).token_lists()[0]


# ---- generation settings ------------------------------------------------------------------------------


def test_do_sample_false_is_greedy_and_matches_transformers(pair):
    draft, target = pair
    dec = make_decoder(draft, target, "target")
    ours = dec.generate(IDS, MASK, max_new_tokens=6, do_sample=False, no_eos=True)
    assert torch.equal(ours.sequences, dec.generate(IDS, MASK, max_new_tokens=6, temperature=0, no_eos=True).sequences)
    ref = target.generate(
        input_ids=IDS, attention_mask=MASK, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert ours.sequences.tolist() == ref[:, IDS.shape[1] :].tolist()
    # a lossless speculative method agrees with the target's greedy output too
    spec = make_decoder(draft, target, "specdecode", gamma=3)
    greedy_spec = spec.generate(IDS, MASK, max_new_tokens=6, do_sample=False, no_eos=True)
    assert torch.equal(greedy_spec.sequences, ours.sequences)


def test_generation_config_and_keywords(pair):
    dec = make_decoder(*pair, "token_v3", alpha=0.3, gamma=2)
    base = dec.generate(IDS, MASK, max_new_tokens=5, do_sample=False, no_eos=True)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=5)
    assert torch.equal(dec.generate(IDS, MASK, generation_config=cfg, no_eos=True).sequences, base.sequences)
    # keywords win over the config, as generate(**kwargs) updates it in transformers
    longer = dec.generate(IDS, MASK, generation_config=cfg, max_new_tokens=7, no_eos=True)
    assert longer.lengths.tolist() == [7, 7]
    sampled = dec.generate(IDS, MASK, generation_config=GenerationConfig(temperature=0.7, top_k=3), seed=4, no_eos=True)
    same = dec.generate(IDS, MASK, temperature=0.7, top_k=3, seed=4, no_eos=True)
    assert torch.equal(sampled.sequences, same.sequences)
    assert sampled.stats.summary()["temperature"] == 0.7 and sampled.stats.summary()["top_k"] == 3
    # a model's own generation config (bookkeeping fields only) is accepted as it is
    own = dec.generate(IDS, MASK, generation_config=pair[1].generation_config, max_new_tokens=5, do_sample=False)
    assert torch.equal(own.sequences, dec.generate(IDS, MASK, max_new_tokens=5, do_sample=False).sequences)
    # no-op values of unimplemented fields are accepted
    ok = GenerationConfig(num_beams=1, repetition_penalty=1.0, do_sample=False, max_new_tokens=5, pad_token_id=0)
    assert torch.equal(dec.generate(IDS, MASK, generation_config=ok, no_eos=True).sequences, base.sequences)


def test_max_length_counts_the_prompt_for_causal_and_the_start_token_for_seq2seq(pair):
    dec = make_decoder(*pair, "specdecode", gamma=2)
    out = dec.generate(IDS, MASK, max_length=IDS.shape[1] + 3, no_eos=True)
    assert out.lengths.tolist() == [3, 3] and out.stats.summary()["max_new_tokens"] == 3
    t5 = make_decoder(*tiny_pair("t5", vocab=8, draft_noise=0.3), "specdecode", gamma=2)
    assert t5.generate(IDS, MASK, max_length=5, no_eos=True).lengths.tolist() == [4, 4]


def test_default_max_new_tokens_is_the_shared_default(pair):
    out = make_decoder(*pair, "draft").generate(IDS[:1], MASK[:1], no_eos=True)
    assert DEFAULT_MAX_NEW_TOKENS == 64 and out.lengths.tolist() == [64]


def test_top_k_zero_is_off(pair):
    dec = make_decoder(*pair, "token_v3", alpha=0.3, gamma=2)
    off = dec.generate(IDS, MASK, max_new_tokens=8, top_k=0, seed=3, no_eos=True)
    assert torch.equal(off.sequences, dec.generate(IDS, MASK, max_new_tokens=8, seed=3, no_eos=True).sequences)
    assert off.stats.summary()["top_k"] is None
    one = dec.generate(IDS, MASK, max_new_tokens=8, top_k=1, seed=3, no_eos=True)
    assert torch.equal(one.sequences, dec.generate(IDS, MASK, max_new_tokens=8, do_sample=False, no_eos=True).sequences)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"repetition_penalty": 1.2}, r"repetition_penalty=1\.2 changes decoding"),
        ({"generation_config": GenerationConfig(num_beams=2)}, r"num_beams=2 changes decoding"),
        ({"generation_config": GenerationConfig(no_repeat_ngram_size=3)}, "no_repeat_ngram_size=3"),
        ({"min_new_tokens": 4}, "min_new_tokens=4"),
        ({"colour": "red"}, "unknown argument 'colour'"),
        ({"generation_config": {"do_sample": False}}, "must be a transformers GenerationConfig, got dict"),
        ({"max_new_tokens": 4, "max_length": 9}, "max_new_tokens or max_length, not both"),
        ({"max_length": 4}, "max_length=4 leaves no room for new tokens after a prompt of width 4"),
        ({"do_sample": True, "temperature": 0}, "do_sample=True needs temperature > 0"),
        ({"do_sample": "yes"}, "do_sample must be True or False"),
        ({"no_eos": True, "eos_token_id": 1}, "no_eos=True turns EOS off"),
        ({"no_eos": 1}, "no_eos must be True or False"),
    ],
)
def test_refused_generation_settings(pair, kw, match):
    dec = make_decoder(*pair, "specdecode", gamma=2)
    with pytest.raises(ValueError, match=match):
        dec.generate(IDS, MASK, **kw)


# ---- EOS ------------------------------------------------------------------------------------------------------


def test_every_eos_id_of_the_generation_config_and_the_tokenizer_ends_a_row():
    draft, target = tiny_pair("llama", vocab=8, init=0.3, draft_noise=0.3)
    dec = make_decoder(draft, target, "target")
    free = _row(dec, no_eos=True)
    first_at: dict[int, int] = {}
    for i, t in enumerate(free):
        first_at.setdefault(t, i)
    order = sorted(first_at, key=first_at.get)
    assert len(order) >= 3, free
    early, late = order[1], order[2]  # the first token produced is not one of this test's EOS ids
    target.generation_config.eos_token_id = [late, early]  # several EOS ids, in any order
    out = dec.generate(IDS[:1], MASK[:1], max_new_tokens=16, seed=5)
    assert out.token_lists()[0] == free[: first_at[early] + 1]
    assert out.stats.summary()["eos_token_ids"] == [late, early]
    target.generation_config.eos_token_id = late  # only the first would stop later
    assert _row(dec) == free[: first_at[late] + 1]
    # the tokenizer's EOS joins the generation config's
    target.generation_config.eos_token_id = [6, 3]
    with_tok = make_decoder(draft, target, "target", tokenizer=tiny_tokenizer())
    assert tiny_tokenizer().eos_token_id == 1 and with_tok.default_eos_ids() == [6, 3, 1]
    target.generation_config.eos_token_id = late
    # no_eos turns all of them off; an explicit id replaces them
    assert _row(dec, no_eos=True) == free
    explicit = dec.generate(IDS[:1], MASK[:1], max_new_tokens=16, seed=5, eos_token_id=early)
    assert explicit.token_lists()[0] == free[: first_at[early] + 1]
    assert explicit.stats.summary()["eos_token_ids"] == [early]


# ---- the cost ratio c --------------------------------------------------------------------------------------------


def test_c_defaults_to_the_per_step_parameter_ratio_and_says_so(pair):
    draft, target = pair
    dec = make_decoder(draft, target, "token_v3", alpha=0.3, gamma=2)
    assert dec.c == pytest.approx(step_cost_ratio(draft, target)) and dec.c_source == "params"
    s = dec.generate(IDS, MASK, max_new_tokens=6, seed=0).stats
    summary = s.summary()
    assert summary["c"] == dec.c > 0 and summary["c_source"] == "params"
    assert summary["modeled_relative_latency"] == pytest.approx(s.modeled(dec.c))
    given = make_decoder(draft, target, "token_v3", alpha=0.3, gamma=2, c=0.1)
    g = given.generate(IDS, MASK, max_new_tokens=6, seed=0).stats.summary()
    assert g["c"] == 0.1 and g["c_source"] == "given"
    zero = make_decoder(draft, target, "token_v3", alpha=0.3, gamma=2, c=0)
    assert zero.generate(IDS, MASK, max_new_tokens=6, seed=0).stats.summary()["c_source"] == "given"


# ---- alpha ----------------------------------------------------------------------------------------------------------


class _TokenHead:
    kind = "token"

    def estimate(self, q_rule, p_rule, q, p, features=None):
        return p_rule


NEEDS_ALPHA = [
    ("lossy", {}), ("chow", {}), ("diff", {}), ("opt", {}), ("token_v1", {}), ("token_v2", {}), ("token_v3", {}),
    ("learned", {"head": _TokenHead()}), ("ensemble", {}), ("token_cascade", {}), ("seq_cascade", {}), ("bild", {}),
]


@pytest.mark.parametrize("method,opts", NEEDS_ALPHA)
def test_alpha_is_required_where_the_rule_reads_one(pair, method, opts):
    with pytest.raises(ValueError, match=rf"^{method} needs alpha \(.*alpha.*\); there is no default$"):
        make_decoder(*pair, method, **opts)
    if method in rules.NAMES():
        with pytest.raises(ValueError, match=rf"^{method} needs alpha"):
            rules.get(method, **opts)


@pytest.mark.parametrize("method", ["specdecode", "target", "draft"])
def test_alpha_is_refused_where_the_rule_takes_none(pair, method):
    with pytest.raises(ValueError, match="takes no alpha"):
        make_decoder(*pair, method, alpha=0.3)
    with pytest.raises(ValueError, match="takes no alpha"):
        rules.get(method, alpha=0.3)


def test_alternatives_to_alpha(pair):
    assert make_decoder(*pair, "ensemble", weight=0.4).rule.weight == 0.4
    assert make_decoder(*pair, "seq_cascade", threshold=-1.0).threshold == -1.0
    assert make_decoder(*pair, "bild", fallback=0.6).fallback == 0.6


@pytest.mark.parametrize(
    "method,alpha,opts,expected",
    [
        ("token_v3", 0.3, {}, {"alpha": 0.3}),
        ("lossy", 0.2, {"beta": 0.5}, {"alpha": 0.2, "beta": 0.5}),
        ("ensemble", None, {"weight": 0.25}, {"alpha": 0.75, "weight": 0.25}),
        ("specdecode", None, {}, {"alpha": None}),
        ("target", None, {}, {"alpha": None}),
        ("token_cascade", 0.4, {}, {"alpha": 0.4}),
        ("seq_cascade", None, {"threshold": -0.5}, {"alpha": None, "threshold": -0.5, "aggregate": "mean"}),
        ("bild", None, {"fallback": 0.6, "rollback": 1.0}, {"alpha": None, "fallback": 0.6, "rollback": 1.0}),
        ("bild", 0.3, {}, {"alpha": 0.3, "fallback": 0.7, "rollback": 2.0}),
    ],
)
def test_the_alpha_used_is_in_the_summary(pair, method, alpha, opts, expected):
    dec = make_decoder(*pair, method, alpha=alpha, gamma=2, **opts)
    summary = dec.generate(IDS, MASK, max_new_tokens=3, seed=0).stats.summary()
    for key, value in expected.items():
        assert summary[key] == (pytest.approx(value) if isinstance(value, float) else value), key


# (method, alpha, "always" | "never"): the rule's own limit values, taken at the boundary where it is closed
DEGENERATE = [
    ("chow", -0.01, "always"), ("chow", 1.0, "never"),
    ("diff", -1.0, "always"), ("diff", 1.0, "never"),
    ("opt", -1.01, "always"), ("opt", 1.01, "never"),
    ("token_v1", -1.0, "always"), ("token_v1", 1.0, "never"),
    ("token_v2", -0.01, "always"), ("token_v2", 1.0, "never"),
    ("token_v3", -0.01, "always"), ("token_v3", 1.0, "never"),
    ("ensemble", 0.0, "always"), ("ensemble", 1.0, "never"),
    ("chow", -math.inf, "always"), ("token_v3", math.inf, "never"),
]
USEFUL = [("chow", 0.0), ("chow", 0.99), ("diff", -0.99), ("diff", 0.99), ("opt", -1.0), ("opt", 1.0),
          ("token_v1", -0.99), ("token_v1", 0.99), ("token_v2", 0.0), ("token_v3", 0.0), ("token_v3", 0.99),
          ("ensemble", 0.5), ("lossy", 0.5)]


@pytest.mark.parametrize("name,alpha,regime", DEGENERATE)
def test_degenerate_alpha_warns_and_really_is_degenerate(name, alpha, regime):
    with pytest.warns(UserWarning, match=f"{name} with alpha=.* {regime} defers"):
        rule = rules.get(name, alpha=alpha)
    g = torch.Generator().manual_seed(0)
    for temp in (4.0, 1.0, 0.25):  # flat to peaked pairs
        q = torch.softmax(torch.randn(4000, 6, generator=g, dtype=torch.float64) / temp, -1)
        p = torch.softmax(torch.randn(4000, 6, generator=g, dtype=torch.float64) / temp, -1)
        defer = rule(q, p, validate=False).defer
        assert bool((defer == (1.0 if regime == "always" else 0.0)).all()), (name, alpha, temp)


@pytest.mark.parametrize("name,alpha", USEFUL)
def test_useful_alpha_does_not_warn(name, alpha):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rules.get(name, alpha=alpha)


def test_degenerate_alpha_of_the_sequential_baselines_and_lossy(pair):
    with pytest.warns(UserWarning, match="token_cascade with alpha=1.0 never defers"):
        make_decoder(*pair, "token_cascade", alpha=1.0)
    with pytest.warns(UserWarning, match="bild with alpha=-0.5 always defers"):
        make_decoder(*pair, "bild", alpha=-0.5)
    with pytest.warns(UserWarning, match="bild with alpha=1.0 never defers"):
        make_decoder(*pair, "bild", fallback=0.0)
    with pytest.warns(UserWarning, match="seq_cascade with alpha=-0.5 always defers"):
        make_decoder(*pair, "seq_cascade", alpha=-0.5)
    with pytest.warns(UserWarning, match="threshold=0.5 > 0 always defers"):
        make_decoder(*pair, "seq_cascade", threshold=0.5)
    with pytest.warns(UserWarning, match="lossy with alpha=0 and beta=1 is exactly SpecDecode"):
        rules.get("lossy", alpha=0.0)
    # and they are: token_cascade with alpha = 1 never calls the target; bild with alpha < 0 always falls back
    s = make_decoder(*pair, "token_cascade", alpha=1.0).generate(IDS, MASK, max_new_tokens=5, no_eos=True).stats
    assert int(s.target_calls.sum()) == 0
    with pytest.warns(UserWarning):
        b = make_decoder(*pair, "bild", alpha=-0.5).generate(IDS, MASK, max_new_tokens=5, no_eos=True).stats
    assert b.deferral_rate == 1.0


# ---- the KV-memory bound ----------------------------------------------------------------------------------------


def test_huge_max_new_tokens_is_refused_before_allocating():
    t5 = make_decoder(*tiny_pair("t5", vocab=8, draft_noise=0.3), "token_v3", alpha=0.3, gamma=2)
    with pytest.raises(ValueError, match=r"^max_new_tokens=1000000000 needs about [\d,]+ bytes of KV cache for a "
                       r"batch of 2 but [\d,]+ bytes are available on cpu; lower max_new_tokens or the batch size$"):
        t5.generate(IDS, MASK, max_new_tokens=10**9)


def test_memory_bound_uses_the_available_memory(pair, monkeypatch):
    import specref.decode.base as decoder_mod

    dec = make_decoder(*pair, "specdecode", gamma=2)
    monkeypatch.setattr(decoder_mod, "available_bytes", lambda device: 1000)
    with pytest.raises(ValueError, match="max_new_tokens=8 needs about .* but 1,000 bytes are available"):
        dec.generate(IDS, MASK, max_new_tokens=8)
    monkeypatch.setattr(decoder_mod, "available_bytes", lambda device: None)  # unknown: no bound
    assert dec.generate(IDS, MASK, max_new_tokens=8, no_eos=True).lengths.tolist() == [8, 8]


@pytest.fixture(scope="module")
def saved_t5(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    tok = tiny_tokenizer()
    paths = []
    for name, model in zip(("draft", "target"), tiny_pair("t5", vocab=8, draft_noise=0.3)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths.append(str(root / name))
    return paths


def test_cli_refuses_a_huge_max_new_tokens_on_t5_in_one_line(saved_t5, capsys):
    draft, target = saved_t5
    rc = main(["generate", "--draft", draft, "--target", target, "--rule", "token_v3", "--alpha", "0.3",
               "--prompt", "a b", "--max-new-tokens", str(10**9), "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert out.err.startswith("specref generate: error: max_new_tokens=1000000000 needs about ")
    assert len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err


# ---- tie-breaking and filter order ------------------------------------------------------------------------------


def test_ties_go_to_the_lowest_index():
    logits = torch.tensor([1.0, 3.0, 3.0, 3.0]).log()  # probabilities proportional to 1, 3, 3, 3
    # T = 0: argmax, lowest index on ties
    assert probs_from_logits(logits, 0.0)[1].tolist() == [0.0, 1.0, 0.0, 0.0]
    # top-k boundary: k = 2 of a three-way tie keeps indices 1 and 2
    assert probs_from_logits(logits, 1.0, top_k=2)[1].tolist() == [0.0, 0.5, 0.5, 0.0]
    # top-p order: tied tokens enter the nucleus by index; mass before 1, 2, 3 is 0, 0.3, 0.6
    kept = probs_from_logits(logits, 1.0, top_p=0.5)[1]
    assert (kept > 0).tolist() == [False, True, True, False]


def test_top_p_boundary_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([0.25, 0.25, 0.25, 0.25])
    # a token is kept iff the mass strictly before it is < top_p: 0.5 is reached by two tokens exactly
    assert (probs_from_logits(probs.log(), 1.0, top_p=0.5)[1] > 0).tolist() == [True, True, False, False]
    assert (probs_from_logits(probs.log(), 1.0, top_p=0.51)[1] > 0).tolist() == [True, True, True, False]


def test_top_k_then_top_p_on_the_renormalised_result():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    # top-k = 2 leaves 4/7, 3/7; top-p = 0.5 on that keeps one token (on the original it would keep two)
    assert probs_from_logits(logits, 1.0, top_k=2, top_p=0.5)[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert (probs_from_logits(logits, 1.0, top_p=0.5)[1] > 0).tolist() == [True, True, False, False]


def _flat_pair():
    """A pair whose logits tie at every token (every LM-head row equal)."""
    draft, target = tiny_pair("llama", vocab=8, init=0.3, draft_noise=0.3)
    with torch.no_grad():
        for m in (draft, target):
            w = m.get_output_embeddings().weight
            w.copy_(w[:1].expand_as(w))
    return draft, target


def test_the_decoder_breaks_ties_as_documented():
    draft, target = _flat_pair()
    for method, alpha in (("target", None), ("specdecode", None), ("token_v3", 0.3)):
        dec = make_decoder(draft, target, method, alpha=alpha, gamma=2)
        greedy = dec.generate(IDS, MASK, max_new_tokens=6, do_sample=False, no_eos=True)
        assert set(greedy.sequences.flatten().tolist()) == {0}, method
        top_k = dec.generate(IDS, MASK, max_new_tokens=30, top_k=2, seed=1, no_eos=True)
        assert set(top_k.sequences.flatten().tolist()) == {0, 1}, method
        top_p = dec.generate(IDS, MASK, max_new_tokens=30, top_p=0.3, seed=1, no_eos=True)  # 3 of 8 tokens
        assert set(top_p.sequences.flatten().tolist()) == {0, 1, 2}, method


def test_ensemble_at_t0_mixes_the_two_argmaxes():
    q_logits = torch.tensor([[0.0, 2.0, 1.0]])
    p_logits = torch.tensor([[3.0, 0.0, 1.0]])
    (q_raw, q), (p_raw, p) = probs_from_logits(q_logits, 0.0), probs_from_logits(p_logits, 0.0)
    out = rules.get("ensemble", weight=0.3)(q, p, q_rule=q_raw, p_rule=p_raw)
    torch.testing.assert_close(out.pi, torch.tensor([[0.3, 0.7, 0.0]]))
