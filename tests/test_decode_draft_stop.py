"""The in-round draft stop (``draft_confidence_threshold``): a row stops drafting within a round after a token
its draft sampled with probability below the threshold, and the next position takes the bonus token.

* the law: chi-square of the first 3 tokens against exact enumeration (:func:`specref.exact.chain_distribution`
  with the stop; with ``bonus="pi"`` that is prod_t pi_t), for SpecDecode, cascade rules and Token V3, both
  bonus modes, with a block-size policy, on the dynamic and static engines; the batch's rows stop at different
  drafts (two prompts, 4000 seeds, threshold 0.5 on a vocabulary of 8);
* negative controls the same test at the same sample size must reject: a stop that throws away the doubted
  draft (its position then takes the bonus draw: the decision reads the token it replaces), and a stop that
  peeks at the accept coins (a row "stops" just before its first rejection);
* the engines give the same tokens and counters, and every row of a batch its own tokens at batch 1;
* with the option off nothing changes (a stop that never fires is the option off), one host sync per round
  stays, and the option costs at most one host read per draft step;
* statistics, GenerationConfig's ``assistant_confidence_threshold``, bad values refused in one line.
"""

from __future__ import annotations

import dataclasses
import math
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decode_exact import LEVEL, SEED, N, combined_gof, report, toy_lms
from test_decode_fast import _assert_same
from test_decode_gamma_policy import Cycling
from test_decode_sync import SETUP, _no_sync_inside_ops, count_syncs  # noqa: F401 - count_syncs: a fixture

from specref import exact, rules
from specref.decode import SpecCascadeDecoder, make_decoder
from specref.decode import decoder as decoder_mod
from specref.decode.gamma_policy import AdaptiveGamma
from specref.decode.rounds import DraftStop
from specref.decode.testing import TOY_PROMPTS, ragged_batch, toy_pair

STOP = 0.5  # on the toy pair the draft doubts (q(x) < 0.5) most of its tokens after one prompt, some after the other
GAMMA = 3
PROMPTS = [*TOY_PROMPTS, (3,), (2, 2, 5, 1)]


def refs(method, alpha, bonus="pi", gamma=GAMMA, stop=STOP):
    rule = rules.get(method, alpha=alpha)
    return [exact.chain_distribution(d, t, rule, gamma, 3, bonus=bonus, draft_confidence_threshold=stop)
            for d, t in toy_lms("llama")]


def sample(method, alpha, *, gamma=GAMMA, stop=STOP, **options):
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=gamma, draft_confidence_threshold=stop, **options)
    ids, mask = ragged_batch(TOY_PROMPTS, N)
    out = dec.generate(ids, mask, max_new_tokens=3, seed=SEED)
    assert (out.lengths == 3).all()
    return out


# ---- the law -----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Descending(Cycling):
    """Causal and erratic, as :class:`Cycling`, but from the longest block down: the first rounds of a 3-token
    sample then draft enough for the stop to end them early."""

    def choose(self, gamma_max, c, accepted, verified, allow_zero=False, since_draft=0, **kw):
        low = 0 if allow_zero else 1
        return gamma_max + low - super().choose(gamma_max, c, accepted, verified, allow_zero, since_draft, **kw)


# (method, alpha, options, engine): SpecDecode, cascade rules (a whole-position and a lossy one), Token V3; the bonus
# from p too, whose law the stop does change (a stopped position takes p's draw where pi != p)
LAW_CASES = [
    ("specdecode", None, {}, "plain"), ("specdecode", None, {}, "fast"),
    ("opt", 0.5, {}, "fast"), ("diff", 0.1, {}, "plain"), ("lossy", 0.3, {}, "fast"),
    ("token_v3", 0.6, {}, "plain"), ("token_v3", 0.6, {}, "fast"),
    ("opt", 0.5, {"bonus": "target"}, "plain"), ("opt", 0.5, {"bonus": "target"}, "fast"),
    ("token_v3", 0.6, {"bonus": "target"}, "fast"),
    ("specdecode", None, {}, "static"), ("token_v3", 0.6, {"bonus": "target"}, "graph"),
    # with a block-size policy, whose g (0 for SpecDecode: plain target steps) is the round's maximum (bonus from
    # pi: the bonus from p makes the law depend on where the policy puts the blocks' ends)
    ("specdecode", None, {"gamma_policy": Descending()}, "fast"),
    ("opt", 0.5, {"gamma_policy": Descending()}, "plain"),
    ("token_v3", 0.6, {"gamma_policy": Descending()}, "static"),
]


def _law_id(case):
    method, alpha, options, engine = case
    extra = "".join(f"-{k}={v if k == 'bonus' else type(v).__name__}" for k, v in options.items())
    return f"{method}-{alpha}{extra}-{engine}"


@pytest.mark.slow
@pytest.mark.parametrize("method,alpha,options,engine", LAW_CASES, ids=[_law_id(c) for c in LAW_CASES])
def test_the_draft_stop_keeps_the_exact_law(method, alpha, options, engine):
    out = sample(method, alpha, engine=engine, **options)
    s = out.stats.summary()
    # the stop fired in a good share of the rows' rounds, at different drafts in different rows
    assert 0.2 < s["stop_share"] < 0.9, s["stop_share"]
    res = combined_gof(out.sequences, refs(method, alpha, options.get("bonus", "pi")))
    report(f"draft stop {_law_id((method, alpha, options, engine))}", res)
    assert res.p_value >= LEVEL, res


def test_the_reference_law_with_the_bonus_from_p_is_not_the_one_without_the_stop():
    """So the bonus='target' cases above test the stop's bonus position, not a law it cannot change."""
    with_stop = refs("opt", 0.5, "target")
    without = refs("opt", 0.5, "target", stop=None)
    assert all(exact.total_variation(a, b) > 0.05 for a, b in zip(with_stop, without))


# ---- negative controls -----------------------------------------------------------------------------------------


class _DiscardsDoubted(DraftStop):
    """Stops where the right stop does, but throws the doubted draft away: its position takes the bonus draw
    (from pi) instead of being verified. Whether it is verified then depends on the token it replaces."""

    def step(self, q, drafted):
        low = q.gather(1, drafted.unsqueeze(1)).squeeze(1) < self.threshold
        self.going &= ~low
        self.limit += self.going
        return self.going


class _PeeksAtCoins(SpecCascadeDecoder):
    """Ends each row's block just before its first rejected draft (read off the accept coins), so the rejected
    position takes the bonus draw from pi instead of the residual."""

    def _run(self, ctx):
        self._fused_kind = None  # every block through verify_block, wrapped below
        real = decoder_mod.verify_block

        def peeking(drafts, q, p, rule, limit=None, **kw):
            first = real(drafts, q, p, rule, limit=limit, **kw)
            return real(drafts, q, p, rule, limit=first.accepted, **kw)

        with mock.patch.object(decoder_mod, "verify_block", peeking):
            super()._run(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("bug", ["discards_doubted", "peeks_at_coins"])
def test_negative_controls_are_rejected(bug):
    if bug == "discards_doubted":
        with mock.patch.object(decoder_mod, "DraftStop", _DiscardsDoubted):
            out = sample("specdecode", None, engine="fast")
    else:
        draft, target = toy_pair("llama")
        dec = make_decoder(draft, target, "specdecode", gamma=GAMMA, draft_confidence_threshold=STOP)
        dec.__class__ = _PeeksAtCoins
        ids, mask = ragged_batch(TOY_PROMPTS, N)
        out = dec.generate(ids, mask, max_new_tokens=3, seed=SEED)
    res = combined_gof(out.sequences, refs("specdecode", None))
    report(f"negative control: draft stop that {bug.replace('_', ' ')}", res)
    assert res.p_value < LEVEL, res


# ---- engines, batches and the option off ----------------------------------------------------------------------

AGREE_CASES = [("specdecode", None, {}), ("token_v3", 0.6, {}), ("token_v3", 0.6, {"bonus": "target"}),
               ("opt", 0.5, {"bonus": "target"}), ("lossy", 0.3, {}),
               ("specdecode", None, {"gamma_policy": Cycling()}), ("opt", 0.5, {"gamma_policy": Cycling()})]


def _decode(method, alpha, options, engine, rows=6, seeds=None, stop=STOP, gamma=6, family="llama", **kw):
    draft, target = toy_pair(family)
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=gamma, engine=engine,
                       draft_confidence_threshold=stop, **options)
    ids, mask = ragged_batch(PROMPTS, rows)
    seeds = list(range(5, 5 + rows)) if seeds is None else seeds
    return dec.generate(ids, mask, max_new_tokens=kw.pop("max_new", 20), seed=seeds, **kw)


def _assert_same_stop(out, ref, exact_float=True):
    _assert_same(out, ref, exact_float)
    assert out.stats.gamma_rounds == ref.stats.gamma_rounds
    assert out.stats.extra.keys() == ref.stats.extra.keys() == {"drafts_offered", "confidence_stops"}
    for k in ref.stats.extra:
        assert torch.equal(out.stats.extra[k], ref.stats.extra[k]), k


@pytest.mark.parametrize("method,alpha,options", AGREE_CASES,
                         ids=[f"{m}-{'-'.join(f'{k}={type(v).__name__}' for k, v in o.items())}"
                              for m, _, o in AGREE_CASES])
def test_engines_agree(method, alpha, options):
    """plain, fast, static and graph (eager on a CPU): the same tokens, counters and stop statistics, with EOS
    and rows leaving the batch."""
    kw = {"eos_token_id": 5, "rows": 8}  # two rows end early at EOS
    ref = _decode(method, alpha, options, "plain", **kw)
    assert ref.stats.summary()["stop_share"] > 0.1 and len(ref.stats.gamma_rounds) >= 3
    assert 0 < int((ref.lengths < 20).sum()) < 8
    _assert_same_stop(_decode(method, alpha, options, "fast", **kw), ref)
    for engine in ("static", "graph"):
        _assert_same_stop(_decode(method, alpha, options, engine, **kw), ref, exact_float=False)


def test_t5_engines_agree():
    """Encoder-decoders: the stop on the static engines' relative bias from positions."""
    ref = _decode("token_v3", 0.6, {}, "fast", family="t5", stop=0.2, no_eos=True)
    assert ref.stats.summary()["stop_share"] > 0.1
    for engine in ("plain", "static"):
        _assert_same_stop(_decode("token_v3", 0.6, {}, engine, family="t5", stop=0.2, no_eos=True), ref,
                          exact_float=engine == "plain")


@pytest.mark.parametrize("method,alpha,bonus", [("specdecode", None, "pi"), ("token_v3", 0.6, "target"),
                                                ("opt", 0.5, "pi")])
def test_a_row_of_a_batch_gets_its_tokens_at_batch_1(method, alpha, bonus):
    """Rows stop at different drafts; a row whose block ends before the widest row's is treated as a round of
    its own length (its bonus draw keyed at its own token index), so it gets what it gets alone, counters
    included (but draft calls: a row takes part in the batch's widest drafting)."""
    batch = _decode(method, alpha, {"bonus": bonus}, "fast", no_eos=True)
    stops = batch.stats.extra["confidence_stops"]
    assert (stops > 0).all() and len(batch.stats.gamma_rounds) >= 3
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, method, alpha=alpha, gamma=6, engine="fast", bonus=bonus,
                       draft_confidence_threshold=STOP)
    ids, mask = ragged_batch(PROMPTS, 6)
    for r in range(6):
        alone = dec.generate(ids[r : r + 1], mask[r : r + 1], max_new_tokens=20, seed=[5 + r], no_eos=True)
        assert alone.token_lists()[0] == batch.token_lists()[r], r
        for name in ("drafted", "accepted", "rejections", "rounds", "pos_reached", "pos_accepted"):
            assert torch.equal(getattr(alone.stats, name)[0], getattr(batch.stats, name)[r]), (r, name)
        for name in ("drafts_offered", "confidence_stops"):
            assert alone.stats.extra[name][0] == batch.stats.extra[name][r], (r, name)
        assert alone.stats.draft_calls[0] <= batch.stats.draft_calls[r]


@settings(max_examples=12)
@given(seed=st.integers(0, 10**6), method=st.sampled_from(["specdecode", "token_v3", "opt"]),
       engine=st.sampled_from(["plain", "fast", "static"]), bonus=st.sampled_from(["pi", "target"]),
       temperature=st.sampled_from([1.0, 0.7, 0.0]))
def test_a_stop_that_never_fires_is_the_option_off(seed, method, engine, bonus, temperature):
    """Property: with a threshold no sampled token's probability falls below, the tokens, counters and forward
    counts are those of the option off (which is the decoder as it was: the option off runs no stop code)."""
    alpha = {"specdecode": None, "token_v3": 0.6, "opt": 0.5}[method]
    kw = {"seeds": [seed + i for i in range(6)], "gamma": 3, "eos_token_id": 7, "temperature": temperature}
    off = _decode(method, alpha, {"bonus": bonus}, engine, stop=None, **kw)
    never = _decode(method, alpha, {"bonus": bonus}, engine, stop=1e-30, **kw)
    _assert_same(never, off)
    assert int(never.stats.extra["confidence_stops"].sum()) == 0
    assert never.stats.gamma_rounds == {3: off.stats.num_rounds} and off.stats.gamma_rounds == {}
    assert "draft_confidence_threshold" not in off.stats.summary() and "stop_share" not in off.stats.summary()


def test_the_option_off_constructs_no_stop():
    """The option off runs the round as before: no stop object, no per-step host read."""
    with mock.patch.object(decoder_mod, "DraftStop", side_effect=AssertionError("constructed")):
        _decode("token_v3", 0.6, {}, "fast", stop=None)
        _decode("specdecode", None, {"gamma_policy": Cycling()}, "plain", stop=None)


# ---- host syncs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["plain", "fast", "static", "graph"])
def test_one_host_read_per_draft_step_at_most(count_syncs, engine):  # noqa: F811 - the fixture
    draft, target = toy_pair("llama")
    dec = make_decoder(draft, target, "token_v3", alpha=0.6, gamma=6, engine=engine, draft_confidence_threshold=STOP)
    ids, mask = ragged_batch(PROMPTS, 4)
    count_syncs["on"] = True
    out = dec.generate(ids, mask, max_new_tokens=16, seed=0, eos_token_id=7)
    count_syncs["on"] = False
    s = out.stats
    # a round of g drafts reads after each of its first g - 1 draft steps, then syncs once at its end
    reads = sum(max(g - 1, 0) * n for g, n in s.gamma_rounds.items())
    assert count_syncs["n"] <= s.num_rounds + reads + SETUP, (count_syncs["n"], s.num_rounds, reads)
    # the stop did end drafting early: fewer draft forwards than full rounds
    assert s.draft_forwards < s.num_rounds * 7


@pytest.mark.parametrize("engine", ["plain", "fast", "graph"])
@pytest.mark.parametrize("method,alpha", [("specdecode", None), ("token_v3", 0.6)])
def test_no_sync_hides_inside_the_ops_of_a_round(engine, method, alpha):
    """The per-step read is the Python-level one counted above; no op of the stop syncs on its own."""
    _no_sync_inside_ops(engine, method, alpha, {"draft_confidence_threshold": STOP})


# ---- statistics ----------------------------------------------------------------------------------------------------


def test_statistics_count_each_rows_own_block():
    """A stop is not a rejection: drafted = verified drafts up to each row's stop, acceptance = accepted /
    verified, and the stop's own numbers agree with what every round offered (read off the round records)."""
    records = []
    out = _decode("opt", 0.5, {}, "plain", on_round=records.append, no_eos=True)
    s, summary = out.stats, out.stats.summary()
    offered = torch.zeros(6, dtype=torch.long)
    stops = torch.zeros(6, dtype=torch.long)
    verified = torch.zeros(6, dtype=torch.long)
    rejections = torch.zeros(6, dtype=torch.long)
    for rec in records:
        assert rec.offered is not None and int(rec.offered.max()) == rec.drafts.shape[1]  # the widest row's
        offered[rec.row_ids] += rec.offered
        stops[rec.row_ids] += (rec.offered < 6).long()
        verified[rec.row_ids] += torch.minimum(rec.accepted + 1, rec.offered)
        rejections[rec.row_ids] += (rec.accepted < rec.offered).long()
    assert torch.equal(s.extra["drafts_offered"], offered) and torch.equal(s.extra["confidence_stops"], stops)
    assert torch.equal(s.drafted, verified) and torch.equal(s.rejections, rejections)
    assert summary["acceptance_rate"] == int(s.accepted.sum()) / int(verified.sum())
    assert summary["confidence_stops"] == int(stops.sum()) > 0
    assert summary["stop_share"] == pytest.approx(int(stops.sum()) / int(s.rounds.sum()))
    assert summary["mean_drafts"] == pytest.approx(int(offered.sum()) / int(s.rounds.sum()))
    assert summary["draft_confidence_threshold"] == STOP
    # the rounds per drafted width, and the draft forwards they took
    assert sum(summary["gamma_rounds"].values()) == summary["rounds"]
    assert summary["draft_forwards"] == sum((g + 1) * n for g, n in summary["gamma_rounds"].items())
    # the same counts on the lean round
    _assert_same_stop(_decode("opt", 0.5, {}, "fast", no_eos=True), out)


@dataclasses.dataclass(frozen=True)
class _Recording(AdaptiveGamma):
    """The policy's view: what it was told before each round."""

    seen: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    def choose(self, gamma_max, c, accepted, verified, allow_zero=False, since_draft=0, **kw):
        self.seen.append((accepted, verified))
        return super().choose(gamma_max, c, accepted, verified, allow_zero, since_draft, **kw)


def test_the_policy_counts_verified_drafts_only():
    """The policy's running acceptance reads the drafts verified up to each row's stop, not the drafts a
    stopped row's forwards made after it; its g is the round's maximum. The lean round tells it the same."""
    draft, target = toy_pair("llama")
    ids, mask = ragged_batch(PROMPTS, 3)
    seen, outs = {}, {}
    records = []
    for engine in ("plain", "fast"):
        policy = _Recording(c=0.05, prior_weight=1.0)
        dec = make_decoder(draft, target, "opt", alpha=0.5, gamma=8, engine=engine, gamma_policy=policy,
                           draft_confidence_threshold=STOP)
        kw = {"on_round": records.append} if engine == "plain" else {}
        outs[engine] = dec.generate(ids, mask, max_new_tokens=30, seed=3, no_eos=True, **kw)
        seen[engine] = policy.seen
    assert seen["plain"] == seen["fast"] and len(records) == len(seen["plain"])
    acc = ver = 0
    for told, rec in zip(seen["plain"], records):
        assert told == (acc, ver)
        acc += int(rec.accepted.sum())
        ver += int(torch.minimum(rec.accepted + 1, rec.offered).sum())
    s = outs["plain"].stats
    assert (acc, ver) == (int(s.accepted.sum()), int(s.drafted.sum()))
    assert max(s.gamma_rounds) <= 8 and s.summary()["stop_share"] > 0.1


# ---- the option, its values, and where it comes from -----------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.3, 1.5, math.nan, math.inf, "0.4", True, [0.4]])
def test_bad_thresholds_are_refused_in_one_line(bad):
    draft, target = toy_pair("llama")
    with pytest.raises(ValueError) as e:
        make_decoder(draft, target, "specdecode", draft_confidence_threshold=bad)
    msg = str(e.value)
    assert msg.startswith("draft_confidence_threshold must be a number in (0, 1)") and repr(bad) in msg
    assert "\n" not in msg


def test_only_the_speculative_methods_take_it():
    draft, target = toy_pair("llama")
    for method, kw in (("target", {}), ("token_cascade", {"alpha": 0.3}), ("bild", {"fallback": 0.5})):
        with pytest.raises(ValueError, match="draft_confidence_threshold applies to the speculative methods"):
            make_decoder(draft, target, method, draft_confidence_threshold=0.4, **kw)
    dec = make_decoder(draft, target, "token_v3", alpha=0.6, gamma=20, draft_confidence_threshold=0.4)
    assert dec.gamma == 20 and "draft_confidence_threshold=0.4" in repr(dec)


def test_generation_config_assistant_confidence_threshold():
    """transformers' field for the same stop: it turns the stop on for the call (0, its "never stop", turns
    it off), a keyword wins over the config, a bad value is refused; other decoders ignore it."""
    from transformers import GenerationConfig

    draft, target = toy_pair("llama")
    ids, mask = ragged_batch(PROMPTS, 4)
    kw = {"max_new_tokens": 12, "seed": 1, "no_eos": True}
    plain = make_decoder(draft, target, "token_v3", alpha=0.6, gamma=6)
    on = make_decoder(draft, target, "token_v3", alpha=0.6, gamma=6, draft_confidence_threshold=STOP)
    ref = on.generate(ids, mask, **kw)
    via_config = plain.generate(ids, mask, generation_config=GenerationConfig(assistant_confidence_threshold=STOP),
                                **kw)
    _assert_same_stop(via_config, ref)
    assert via_config.stats.summary()["draft_confidence_threshold"] == STOP
    via_keyword = plain.generate(ids, mask, assistant_confidence_threshold=STOP, **kw)
    _assert_same_stop(via_keyword, ref)
    off = on.generate(ids, mask, generation_config=GenerationConfig(assistant_confidence_threshold=0.0), **kw)
    _assert_same(off, plain.generate(ids, mask, **kw))
    assert "draft_confidence_threshold" not in off.stats.summary()
    over = on.generate(ids, mask, generation_config=GenerationConfig(assistant_confidence_threshold=0.0),
                       assistant_confidence_threshold=STOP, **kw)
    _assert_same_stop(over, ref)
    with pytest.raises(ValueError, match=r"assistant_confidence_threshold must be a number in \(0, 1\)"):
        plain.generate(ids, mask, assistant_confidence_threshold=1.5, **kw)
    target_only = make_decoder(draft, target, "target")
    out = target_only.generate(ids, mask, assistant_confidence_threshold=STOP, **kw)
    assert "draft_confidence_threshold" not in out.stats.summary()
