"""CPU: specref's block-size policy against transformers' assisted generation, on the zoo pair with the highest
acceptance (``arith-llama``: Llama draft 0.44M / target 4.11M parameters), in ONE run on the same prompts.

What one run does (about 3 minutes on a 2-core CPU with the defaults; ``--smoke``: seconds):

1. **Prompts**: the first ``--examples`` test examples of the pair's task through its prompt template (what
   ``specref generate --pair arith-llama`` sends), batch 1 each (assisted generation is batch 1), T = 1
   without top-k / top-p, the pair's EOS ids, at most ``--max-new-tokens`` new tokens.
2. **Configurations**: transformers ``generate`` of the target alone, and with ``assistant_model=draft``
   under its default schedule (transformers 5.x: up to 20 draft tokens, stopped early when the draft's
   confidence falls below a threshold that adapts within the call) and under a constant ``--gamma`` drafts;
   specref (engine ``fast``, the CPU engine) target-only, SpecDecode with a fixed ``--gamma``, SpecDecode
   with the block-size policy (:class:`specref.decode.gamma_policy.AdaptiveGamma`, g in 0..gamma, g = 0 a
   plain target step), and SpecDecode with the in-round draft stop (``draft_confidence_threshold``
   ``--stop-threshold``, transformers' default 0.4, fixed here) on blocks of at most ``--stop-gamma`` (20, as
   transformers), alone and under the block-size policy (its g in 0..stop-gamma as each round's maximum).
   Assisted generation with ``do_sample=True`` samples the target's law, as SpecDecode does.
3. **Calibration** (untimed; also the warm-up): every configuration decodes the first ``--calib`` prompts.
   Forward hooks on both models time every forward call by its width, which gives the costs measured inside
   specref's own calls: ``c`` = draft one-token forward / target one-token forward (target-only decoding),
   ``verify_slope`` = (target block of gamma + 1 / target one-token forward - 1) / gamma, and the time outside
   the forwards per fixed-gamma round and per target-only token, over the target one-token forward:
   ``round_overhead`` and ``plain_overhead``. The policies get exactly these four numbers (their other settings
   are the defaults).
4. **Timed passes**: ``--repeats`` passes over the prompts; within a pass each prompt is decoded by every
   configuration in turn, the order rotated from prompt to prompt and pass to pass, so that a slow spell of
   the machine falls on every configuration alike. Ratios are taken per pass (paired), then their median.
   The same hooks stay on in every configuration (a counter and two clock reads per forward call): forward
   calls per generated token (prefill included), time inside each model's forwards, and time outside them
   (the decoding loop itself: sampling, verification, bookkeeping). Acceptance is specref's statistic (accepted
   / verified drafts) for both libraries; transformers' accepted drafts per round are read where its loop
   reports them to the draft-length schedule (``update_candidate_strategy``), checked against the tokens.
5. JSON (everything) and markdown (``<out>.json``, ``<out>.md``); ``--render JSON`` rewrites the markdown of a
   finished run from its JSON.

Usage::

    python bench/assisted_cpu.py --out bench/results/cpu-assisted-policy-DATE
    python bench/suite.py --assisted-cpu --out bench/results/cpu-assisted-policy-DATE    # the same section
    python bench/assisted_cpu.py --smoke --out /tmp/assisted                              # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.clock import elapsed, log, restart  # noqa: E402
from bench.output import strip_suffix, write_report  # noqa: E402
from bench.timing import sync  # noqa: E402
from specref.options import fraction, nonneg_float, nonneg_int, positive_int  # noqa: E402

__all__ = ["CONFIGS", "PAIR", "POLICY", "STOP", "STOP_POLICY", "build_parser", "main", "markdown", "render", "run",
           "summarize"]

PAIR = "arith-llama"

#: the configurations of one run, in the order of the report: (key, label)
CONFIGS = (
    ("hf/target", "transformers `generate`, target only"),
    ("specref/target", "specref target-only"),
    ("hf/assisted/default", "transformers assisted generation, default schedule"),
    ("hf/assisted/constant", "transformers assisted generation, constant gamma"),
    ("specref/specdecode/fixed", "specref SpecDecode, fixed gamma"),
    ("specref/specdecode/adaptive", "specref SpecDecode, block-size policy"),
    ("specref/specdecode/stop", "specref SpecDecode, confidence stop, gamma max"),
    ("specref/specdecode/stop-adaptive", "specref SpecDecode, confidence stop + block-size policy, gamma max"),
)
POLICY = "specref/specdecode/adaptive"
#: the in-round draft stop on the draft's confidence (draft_confidence_threshold), alone and under the policy
STOP, STOP_POLICY = "specref/specdecode/stop", "specref/specdecode/stop-adaptive"
#: the speculative configurations, in the order of the block-size table
SPECULATIVE = ("hf/assisted/default", "hf/assisted/constant", "specref/specdecode/fixed", POLICY, STOP, STOP_POLICY)
#: defaults of the stop's settings (also for runs made before they existed): transformers' threshold and its
#: largest draft
STOP_DEFAULTS = {"stop_threshold": 0.4, "stop_gamma": 20}


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="CPU: specref's block-size policy vs transformers' assisted generation "
                                 f"on the zoo pair {PAIR}", prog="bench/assisted_cpu.py", add_help=add_help)
    ap.add_argument("--out", default=None, help="output prefix: <out>.json, <out>.md "
                    "(default: bench/results/cpu-assisted-policy)")
    ap.add_argument("--smoke", action="store_true", help="2 prompts, 6 new tokens, 1 pass (seconds)")
    ap.add_argument("--examples", type=positive_int, default=None,
                    help="test prompts, batch 1 each (default 32; smoke 2)")
    ap.add_argument("--calib", type=positive_int, default=None,
                    help="prompts of the untimed calibration / warm-up pass (default 8; smoke 1)")
    ap.add_argument("--max-new-tokens", type=positive_int, default=None,
                    help="new tokens at most (default 96; smoke 6)")
    ap.add_argument("--repeats", type=positive_int, default=None,
                    help="timed passes over the prompts (default 3; smoke 1)")
    ap.add_argument("--gamma", type=positive_int, default=5,
                    help="fixed gamma, the policy's largest g and transformers' "
                    "constant draft length (default: 5)")
    ap.add_argument("--stop-threshold", type=fraction, default=STOP_DEFAULTS["stop_threshold"],
                    help="draft_confidence_threshold of the confidence-stop configurations (default: 0.4, "
                         "transformers' assistant_confidence_threshold)")
    ap.add_argument("--stop-gamma", type=positive_int, default=STOP_DEFAULTS["stop_gamma"],
                    help="the confidence-stop configurations' largest block (default: 20, transformers' largest "
                         "draft)")
    ap.add_argument("--temperature", type=nonneg_float, default=1.0, help="sampling temperature (default: 1.0)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--seed", type=nonneg_int, default=0, help="seed of the decodes (default: 0)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="measure nothing: rewrite a finished run's markdown from its JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        return render(args.render)
    return run(args)


# ---- measurement helpers ------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name as the machine reports it (``/proc/cpuinfo``), else Python's guess."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class ForwardLog:
    """Forward hooks on the draft and the target: calls and seconds per role and input width, while armed.

    The same hooks serve transformers' ``generate`` and specref's decoder (both call the model module), so
    every configuration pays the same for them: a dictionary update and two ``perf_counter`` reads a call."""

    def __init__(self, draft: Any, target: Any) -> None:
        self.armed = False
        self.reset()
        self._handles = []
        for role, model in (("draft", draft), ("target", target)):
            self._handles.append(model.register_forward_pre_hook(self._pre(role), with_kwargs=True))
            self._handles.append(model.register_forward_hook(self._post(role)))

    def reset(self) -> None:
        #: role -> width -> [calls, seconds]
        self.by_width: dict[str, dict[int, list[float]]] = {"draft": {}, "target": {}}
        #: widths of the target's calls, in order (assisted generation's draft lengths are read off them)
        self.target_widths: list[int] = []
        self._open: dict[str, tuple[int, float]] = {}

    def _pre(self, role: str) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if self.armed:
                ids = kwargs.get("input_ids", args[0] if args else None)
                width = int(ids.shape[1]) if ids is not None else 0
                self._open[role] = (width, time.perf_counter())
        return hook

    def _post(self, role: str) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> None:
            start = self._open.pop(role, None)
            if start is not None:
                width, t0 = start
                cell = self.by_width[role].setdefault(width, [0, 0.0])
                cell[0] += 1
                cell[1] += time.perf_counter() - t0
                if role == "target":
                    self.target_widths.append(width)
        return hook

    def calls(self, role: str) -> int:
        return int(sum(c for c, _ in self.by_width[role].values()))

    def seconds(self, role: str) -> float:
        return sum(s for _, s in self.by_width[role].values())

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def set_schedule(draft: Any, schedule: str, gamma: int) -> None:
    """The draft's generation config as assisted generation reads it: ``default`` leaves transformers' own
    defaults (the fields unset), ``constant`` drafts exactly ``gamma`` tokens a round with no confidence stop."""
    gc = draft.generation_config
    if schedule == "default":
        gc.num_assistant_tokens = gc.num_assistant_tokens_schedule = gc.assistant_confidence_threshold = None
    else:
        gc.num_assistant_tokens, gc.num_assistant_tokens_schedule = gamma, "constant"
        gc.assistant_confidence_threshold = 0.0


def step_costs(log_: Any) -> dict[str, Any]:
    """Mean seconds of each role's forwards by width, and the one-token and block times."""
    out: dict[str, Any] = {}
    for role in ("draft", "target"):
        out[role] = {str(w): {"calls": int(c), "ms": 1e3 * s / c} for w, (c, s) in sorted(log_.by_width[role].items())
                     if c}
    return out


def _ms(costs: dict[str, Any], role: str, width: int) -> float | None:
    cell = costs.get(role, {}).get(str(width))
    return cell["ms"] if cell else None


class AssistedCpuRun:
    """One run: the pair, its prompts, the configurations, the calibration and the timed passes."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        import transformers

        self.args = args
        smoke = args.smoke
        for k, v in {"examples": 2 if smoke else 32, "calib": 1 if smoke else 8, "max_new_tokens": 6 if smoke else 96,
                     "repeats": 1 if smoke else 3}.items():
            if getattr(args, k, None) is None:
                setattr(args, k, v)
        torch.set_num_threads(args.threads)
        prefix = args.out or os.path.join(REPO, "bench", "results", "cpu-assisted-policy" + ("-smoke" if smoke else ""))
        if os.path.isdir(prefix) or prefix.endswith(os.sep):
            prefix = os.path.join(prefix, "cpu-assisted-policy")
        self.prefix = strip_suffix(prefix)
        os.makedirs(os.path.dirname(os.path.abspath(self.prefix)), exist_ok=True)
        self.R: dict[str, Any] = {
            "section": "assisted-cpu", "smoke": smoke, "args": {k: v for k, v in vars(args).items()
                                                                 if k not in ("func", "command")},
            "env": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version(), "machine": platform.machine()},
            "errors": []}
        log(f"assisted-cpu on {self.R['env']['cpu']} ({os.cpu_count()} cores, {torch.get_num_threads()} thread); "
            f"torch {torch.__version__}, transformers {transformers.__version__}; writing {self.prefix}.json/.md")

    def write(self) -> None:
        self.R["total_seconds"] = round(elapsed(), 1)
        write_report(self.prefix, self.R, markdown(self.R))

    # -- set-up --------------------------------------------------------------------------------------------
    def load(self) -> None:
        import torch

        from specref.decode.step_cost import step_cost_ratio
        from specref.loading import load_pair

        args = self.args
        self.pair = pair = load_pair(PAIR, device="cpu")
        tok = pair.tokenizer
        examples = pair.task.load("test")[: max(args.examples, args.calib)]
        if len(examples) < args.examples:
            raise ValueError(f"{PAIR}: the test split has {len(examples)} examples, fewer than --examples")
        self.prompts = [list(tok(pair.format_prompt(e.source)).input_ids) for e in examples]
        eos = pair.target.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tok.eos_token_id}
        self.eos = sorted(int(e) for e in eos if e is not None)
        card = pair.card or {}
        self.R["pair"] = {
            "name": PAIR, "draft_params": sum(p.numel() for p in pair.draft.parameters()),
            "target_params": sum(p.numel() for p in pair.target.parameters()),
            "param_step_ratio": step_cost_ratio(pair.draft, pair.target),
            "card_acceptance": (card.get("acceptance") or {}).get("acceptance"),
            "draft_arch": (card.get("models") or {}).get("draft", {}).get("arch"),
            "target_arch": (card.get("models") or {}).get("target", {}).get("arch")}
        lens = [len(p) for p in self.prompts[: args.examples]]
        self.R["prompts"] = {"split": "test", "examples": len(lens), "template": pair.task.prompt_template,
                             "prompt_tokens_mean": sum(lens) / len(lens), "prompt_tokens_max": max(lens),
                             "eos_token_ids": self.eos, "max_new_tokens": args.max_new_tokens,
                             "temperature": args.temperature, "batch": 1}
        self.hooks = ForwardLog(pair.draft, pair.target)
        self.torch = torch
        log(f"{PAIR}: draft {self.R['pair']['draft_params'] / 1e6:.2f}M, target "
            f"{self.R['pair']['target_params'] / 1e6:.2f}M parameters; {len(lens)} prompts of "
            f"{self.R['prompts']['prompt_tokens_mean']:.0f} tokens on average")

    def decoders(self, policies: dict[str, Any] | None = None) -> None:
        from specref.decode import make_decoder

        p, g, args = self.pair, self.args.gamma, self.args
        kw = {"engine": "fast", "tokenizer": p.tokenizer}
        stop = {"gamma": args.stop_gamma, "draft_confidence_threshold": args.stop_threshold}
        self.dec = {"specref/target": make_decoder(p.draft, p.target, "target", **kw),
                    "specref/specdecode/fixed": make_decoder(p.draft, p.target, "specdecode", gamma=g, **kw),
                    STOP: make_decoder(p.draft, p.target, "specdecode", **stop, **kw)}
        for key, policy in (policies or {}).items():
            shape = stop if key == STOP_POLICY else {"gamma": g}
            self.dec[key] = make_decoder(p.draft, p.target, "specdecode", gamma_policy=policy, **shape, **kw)

    # -- one decode ----------------------------------------------------------------------------------------
    def decode(self, key: str, prompt: list[int], seed: int) -> dict[str, Any]:
        """One prompt through one configuration: wall seconds, tokens and counts (hooks reset per call)."""
        torch, args = self.torch, self.args
        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)
        h = self.hooks
        h.reset()
        row: dict[str, Any] = {}
        if key.startswith("hf/"):
            target, draft = self.pair.target, self.pair.draft
            kw: dict[str, Any] = {"do_sample": True, "temperature": args.temperature, "top_k": 0, "top_p": 1.0,
                                  "max_new_tokens": args.max_new_tokens, "pad_token_id": 0,
                                  "eos_token_id": self.eos}
            if key.startswith("hf/assisted/"):
                set_schedule(draft, key.rsplit("/", 1)[1], args.gamma)
                kw["assistant_model"] = draft
            torch.manual_seed(seed)
            with RoundMatches() as matches:
                h.armed = True
                sync("cpu")
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = target.generate(ids, attention_mask=mask, **kw)
                sync("cpu")
                wall = time.perf_counter() - t0
                h.armed = False
            tokens = int(out.shape[1] - ids.shape[1])
            if "assisted" in key:
                # every target call is a round; it reads the token before the drafts and the drafts (the first
                # call: the prompt and the drafts); its accepted drafts are what the round reports to the schedule
                ks = [w - (ids.shape[1] if i == 0 else 1) for i, w in enumerate(h.target_widths)]
                ns = matches.matches
                if len(ns) != len(ks) or sum(n + 1 for n in ns) != tokens:
                    raise RuntimeError(f"assisted generation: {len(ks)} target calls, {len(ns)} rounds reported, "
                                       f"{tokens} tokens vs {sum(n + 1 for n in ns)} = sum(accepted + 1)")
                row.update(rounds=len(ks), drafted=sum(ks), accepted=sum(ns),
                           verified=sum(min(n + 1, k) for n, k in zip(ns, ks)), gamma_rounds=_hist(ks))
        else:
            dec = self.dec[key]
            h.armed = True
            t0 = time.perf_counter()
            out = dec.generate(ids, mask, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_k=0, top_p=1.0, eos_token_id=self.eos, seed=seed)
            wall = time.perf_counter() - t0
            h.armed = False
            s = out.stats
            tokens = int(out.lengths.sum())
            if key != "specref/target":
                # batch 1: a round's width is the row's drafts (with the stop, up to the row's stop)
                g_rounds = {int(k): int(v) for k, v in s.gamma_rounds.items()} or {args.gamma: int(s.num_rounds)}
                row.update(rounds=int(s.num_rounds), drafted=sum(g * n for g, n in g_rounds.items()),
                           accepted=int(s.accepted.sum()), verified=int(s.drafted.sum()), gamma_rounds=g_rounds)
                if "confidence_stops" in s.extra:
                    row["stops"] = int(s.extra["confidence_stops"].sum())
        row.update(wall_s=wall, tokens=tokens, draft_calls=h.calls("draft"), target_calls=h.calls("target"),
                   draft_s=h.seconds("draft"), target_s=h.seconds("target"))
        self._widths(key, h)
        return row

    def _widths(self, key: str, h: ForwardLog) -> None:
        """Accumulate the hooks' per-width forward times of ``key`` while ``self.acc_widths`` is set."""
        acc = getattr(self, "acc_widths", None)
        if acc is None:
            return
        cfg = acc.setdefault(key, {"draft": {}, "target": {}})
        for role in ("draft", "target"):
            for w, (c, s) in h.by_width[role].items():
                cell = cfg[role].setdefault(w, [0, 0.0])
                cell[0] += c
                cell[1] += s

    # -- calibration (untimed, also the warm-up) -----------------------------------------------------------
    def calibrate(self) -> None:
        from specref.decode.gamma_policy import AdaptiveGamma

        args, R = self.args, self.R
        self.decoders()
        self.acc_widths = {}
        rows: dict[str, dict[str, Any]] = {}
        for i, prompt in enumerate(self.prompts[: args.calib]):  # configurations in turn: the same machine state
            for k in ("hf/target", "hf/assisted/default", "hf/assisted/constant", "specref/target",
                      "specref/specdecode/fixed"):
                _add(rows.setdefault(k, {}), self.decode(k, prompt, 10**6 + i))
        costs = {k: step_costs(_Widths(v)) for k, v in self.acc_widths.items()}
        self.acc_widths = None
        t1 = _ms(costs["specref/target"], "target", 1)
        d1 = _ms(costs["specref/specdecode/fixed"], "draft", 1)
        blk = _ms(costs["specref/specdecode/fixed"], "target", args.gamma + 1)
        c = d1 / t1
        slope = max(0.0, (blk / t1 - 1) / args.gamma)
        tgt, fix = rows["specref/target"], rows["specref/specdecode/fixed"]
        out_step = 1e3 * (tgt["wall_s"] - tgt["target_s"]) / tgt["tokens"]
        out_round = 1e3 * (fix["wall_s"] - fix["draft_s"] - fix["target_s"]) / fix["rounds"]
        R["calibration"] = {
            "prompts": args.calib, "target_step_ms": t1, "draft_step_ms": d1, "target_block_ms": blk,
            "block_width": args.gamma + 1, "c": c, "verify_slope": slope, "outside_ms_per_target_step": out_step,
            "outside_ms_per_round": out_round, "outside_round_in_target_steps": out_round / t1,
            "param_step_ratio": R["pair"]["param_step_ratio"], "forward_ms_by_width": costs,
            "fixed_acceptance": fix["accepted"] / fix["verified"] if fix.get("verified") else None,
            "how": "c = draft one-token forward / target one-token forward; verify_slope = (target block of gamma + "
                   "1 / target one-token forward - 1) / gamma; round_overhead / plain_overhead = the time outside "
                   "the forwards per fixed-gamma round / per target-only step, over the target one-token forward; "
                   "all from hooks around the models' forwards inside specref's own calls (engine fast), untimed "
                   "pass"}
        policy = AdaptiveGamma(c=c, verify_slope=slope, round_overhead=max(0.0, out_round / t1),
                               plain_overhead=max(0.0, out_step / t1))
        R["calibration"]["policy"] = repr(policy)
        self.decoders({POLICY: policy, STOP_POLICY: policy})
        for i, prompt in enumerate(self.prompts[: args.calib]):  # the warm-up of the decoders not timed above
            for k in (POLICY, STOP, STOP_POLICY):
                self.decode(k, prompt, 10**6 + i)
        log(f"calibration: target step {t1:.3f} ms, draft step {d1:.3f} ms, block of {args.gamma + 1} {blk:.3f} ms, "
            f"outside the forwards {out_round:.3f} ms per round vs {out_step:.3f} ms per target step -> c = {c:.3f}, "
            f"verify_slope = {slope:.3f} (parameter ratio {R['pair']['param_step_ratio']:.3f}); {policy!r}")
        self.write()

    # -- timed passes --------------------------------------------------------------------------------------
    def timed(self) -> None:
        args, R = self.args, self.R
        keys = [k for k, _ in CONFIGS]
        R["passes"] = []
        self.acc_widths = {}
        for r in range(args.repeats):
            acc: dict[str, dict[str, Any]] = {k: {} for k in keys}
            for i, prompt in enumerate(self.prompts[: args.examples]):
                shift = (i + r) % len(keys)
                for k in keys[shift:] + keys[:shift]:
                    row = self.decode(k, prompt, args.seed + 1000 * r + i)
                    _add(acc[k], row)
            R["passes"].append(acc)
            R["summary"] = summarize(R)
            line = ", ".join(f"{k} {acc[k]['tokens'] / acc[k]['wall_s']:.1f}" for k in keys)
            log(f"pass {r + 1}/{args.repeats} (tok/s): {line}")
            self.write()
        R["forward_ms_by_width"] = {k: step_costs(_Widths(v)) for k, v in self.acc_widths.items()}
        self.acc_widths = None
        R["summary"] = summarize(R)
        self.write()

    def finish(self) -> None:
        self.hooks.remove()
        set_schedule(self.pair.draft, "default", self.args.gamma)
        self.write()
        print("\n" + markdown(self.R), flush=True)
        log(f"wrote {self.prefix}.json and {self.prefix}.md")


class RoundMatches:
    """While open: the accepted drafts of every round of transformers' assisted generation, as its loop reports
    them to the candidate generator's schedule (``update_candidate_strategy(input_ids, scores, num_matches)``)."""

    def __enter__(self) -> RoundMatches:
        from transformers.generation import candidate_generator as cg

        self.cls = cg.AssistedCandidateGenerator
        self.orig = orig = self.cls.update_candidate_strategy
        self.matches: list[int] = []
        rec = self.matches

        def update_candidate_strategy(gen: Any, *a: Any, **kw: Any) -> Any:
            n = kw["num_matches"] if "num_matches" in kw else a[2]
            rec.append(int(n))
            return orig(gen, *a, **kw)

        self.cls.update_candidate_strategy = update_candidate_strategy
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cls.update_candidate_strategy = self.orig


class _Widths:
    """A ForwardLog-shaped view of accumulated per-width times (for :func:`step_costs`)."""

    def __init__(self, by_width: dict[str, dict[int, list[float]]]) -> None:
        self.by_width = by_width


def _hist(ks: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for k in ks:
        out[k] = out.get(k, 0) + 1
    return out


def _add(acc: dict[str, Any], row: dict[str, Any]) -> None:
    for k, v in row.items():
        if k == "gamma_rounds":
            g = acc.setdefault(k, {})
            for kk, n in v.items():
                g[str(kk)] = g.get(str(kk), 0) + n
        else:
            acc[k] = acc.get(k, 0) + v


# ---- summary and report -------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(R: dict[str, Any]) -> dict[str, Any]:
    """Per configuration: tok/s per pass (median, min, max), paired ratios, acceptance, calls and forward times
    per generated token, the block sizes used; then the target "policy >= assisted generation". Pure in R."""
    passes = R.get("passes") or []
    keys = [k for k, _ in CONFIGS if all(k in p and p[k].get("wall_s") for p in passes)] if passes else []
    tps = {k: [p[k]["tokens"] / p[k]["wall_s"] for p in passes] for k in keys}

    def ratio(a: str, b: str) -> dict[str, Any] | None:
        if a not in tps or b not in tps:
            return None
        rs = [x / y for x, y in zip(tps[a], tps[b])]
        return {"median": _median(rs), "min": min(rs), "max": max(rs), "per_pass": rs}

    out: dict[str, Any] = {"configs": {}}
    for k in keys:
        tot: dict[str, Any] = {}
        for p in passes:
            _add(tot, p[k])
        n = tot["tokens"]
        outside = tot["wall_s"] - tot["draft_s"] - tot["target_s"]
        row = {"tokens_per_s": {"median": _median(tps[k]), "min": min(tps[k]), "max": max(tps[k]),
                                "per_pass": tps[k]},
               "vs_hf_target": ratio(k, "hf/target"), "vs_specref_target": ratio(k, "specref/target"),
               "tokens": n, "draft_calls_per_token": tot["draft_calls"] / n,
               "target_calls_per_token": tot["target_calls"] / n, "ms_per_token": 1e3 * tot["wall_s"] / n,
               "draft_fwd_ms_per_token": 1e3 * tot["draft_s"] / n, "target_fwd_ms_per_token": 1e3 * tot["target_s"] / n,
               "outside_ms_per_token": 1e3 * outside / n}
        if tot.get("rounds"):
            g = {int(kk): v for kk, v in tot["gamma_rounds"].items()}
            rounds = sum(g.values())
            row.update(acceptance=tot["accepted"] / tot["verified"] if tot["verified"] else None,
                       accepted_per_drafted=tot["accepted"] / tot["drafted"] if tot["drafted"] else None,
                       rounds=tot["rounds"], tokens_per_round=n / tot["rounds"],
                       outside_ms_per_round=1e3 * outside / tot["rounds"],
                       mean_gamma=sum(kk * v for kk, v in g.items()) / rounds,
                       gamma_share={str(kk): v / rounds for kk, v in sorted(g.items())},
                       zero_share=g.get(0, 0) / rounds)
            if "stops" in tot:  # rounds whose drafting the confidence stop ended before the round's largest g
                row["stop_share"] = tot["stops"] / rounds
        out["configs"][k] = row
    out["policy_vs"] = {k: ratio(POLICY, k) for k in ("hf/assisted/default", "hf/assisted/constant",
                                                       "specref/specdecode/fixed")}
    for key, name in ((STOP, "stop_vs"), (STOP_POLICY, "stop_policy_vs")):  # against the same references
        if key in tps:
            out[name] = {k: ratio(key, k) for k in ("hf/assisted/default", "hf/assisted/constant",
                                                    "specref/specdecode/fixed", POLICY)}
            m = out[name]["hf/assisted/default"]
            out[name]["met"] = bool(m and m["median"] >= 1.0)
            out[name]["met_every_pass"] = bool(m and m["min"] >= 1.0)
    F = R.get("forward_ms_by_width") or {}
    t1 = _ms(F.get("specref/target", {}), "target", 1)
    d1 = _ms(F.get("specref/specdecode/fixed", {}), "draft", 1)
    gamma = R["args"]["gamma"]
    blk = _ms(F.get("specref/specdecode/fixed", {}), "target", gamma + 1)
    if t1 and d1 and blk:  # the same costs as the calibration's, measured over the timed passes
        out["timed_costs"] = {"target_step_ms": t1, "draft_step_ms": d1, "target_block_ms": blk, "c": d1 / t1,
                              "verify_slope": max(0.0, (blk / t1 - 1) / gamma)}
    m = out["policy_vs"]["hf/assisted/default"]
    out["target"] = {"goal": "the block-size policy >= transformers' assisted generation (default schedule), "
                             "tokens/s on the same prompts",
                     "measured": m["median"] if m else None, "met": bool(m and m["median"] >= 1.0),
                     "met_every_pass": bool(m and m["min"] >= 1.0)}
    return out


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:.{nd}f}"


def _r(x: dict[str, Any] | None, nd: int = 2) -> str:
    if not x:
        return "-"
    return f"{x['median']:.{nd}f}x" + (f" [{x['min']:.{nd}f}-{x['max']:.{nd}f}]" if x["min"] != x["max"] else "")


def _label(key: str, args: dict[str, Any]) -> str:
    gamma = args["gamma"]
    stop = {k: args.get(k, v) for k, v in STOP_DEFAULTS.items()}  # runs made before the stop existed: defaults
    return (dict(CONFIGS)[key].replace("constant gamma", f"constant {gamma}")
            .replace("fixed gamma", f"fixed gamma {gamma}").replace("gamma max", f"gamma max {stop['stop_gamma']}")
            .replace("confidence stop", f"confidence stop {stop['stop_threshold']:g}"))


def markdown(R: dict[str, Any]) -> str:
    env, args = R["env"], R["args"]
    g = args["gamma"]
    L = [f"# CPU: the block-size policy vs transformers' assisted generation ({R.get('pair', {}).get('name', PAIR)})",
         "", f"{env['cpu']}, {env['cores']} cores, {env['threads']} torch thread; torch {env['torch']}, "
         f"transformers {env['transformers']}, Python {env['python']}."
         + (" SMOKE RUN: numbers meaningless." if R.get("smoke") else ""), ""]
    P, pr = R.get("pair"), R.get("prompts")
    if P and pr:
        L.append(f"Pair `{P['name']}`: draft {P['draft_params'] / 1e6:.2f}M / target {P['target_params'] / 1e6:.2f}M "
                 f"parameters (card acceptance {_f(P.get('card_acceptance'), 3)}). {pr['examples']} test prompts "
                 f"(task template, {pr['prompt_tokens_mean']:.0f} tokens on average), batch 1, T = "
                 f"{pr['temperature']:g} (no top-k / top-p), EOS {pr['eos_token_ids']}, at most "
                 f"{pr['max_new_tokens']} new tokens; {args['repeats']} timed passes, each prompt decoded by every "
                 f"configuration in turn (order rotated); ratios are per pass, median [min-max]; gamma {g}; specref "
                 f"engine `fast`.")
    C = R.get("calibration")
    if C:
        L += ["", f"Costs measured in this run (untimed pass over {C['prompts']} prompts, hooks around the forwards "
              f"inside specref's calls): target one-token forward {_f(C['target_step_ms'], 3)} ms, draft "
              f"{_f(C['draft_step_ms'], 3)} ms, target block of {C['block_width']} {_f(C['target_block_ms'], 3)} ms; "
              f"outside the forwards {_f(C['outside_ms_per_round'], 3)} ms per fixed-gamma round vs "
              f"{_f(C['outside_ms_per_target_step'], 3)} ms per target-only token. So **c = {_f(C['c'], 3)}** (the "
              f"per-step parameter ratio is {_f(C['param_step_ratio'], 3)}) and verify_slope = "
              f"{_f(C['verify_slope'], 3)}; the policy: `{C['policy']}`."]
    S = R.get("summary")
    if S and S.get("configs"):
        L += ["", "| configuration | tok/s (median [min-max]) | x transformers target-only | x specref target-only "
              "| acceptance | draft calls / token | target calls / token | mean draft length | ms / token: draft "
              "fwd + target fwd + outside |", "|---|---|---|---|---|---|---|---|---|"]
        for k, _ in CONFIGS:
            c = S["configs"].get(k)
            if not c:
                continue
            t = c["tokens_per_s"]
            L.append(f"| {_label(k, args)} | {t['median']:.1f} [{t['min']:.1f}-{t['max']:.1f}] | "
                     f"{_r(c['vs_hf_target'])} | {_r(c['vs_specref_target'])} | {_f(c.get('acceptance'), 3)} | "
                     f"{c['draft_calls_per_token']:.3f} | {c['target_calls_per_token']:.3f} | "
                     f"{_f(c.get('mean_gamma'), 2)} | {c['draft_fwd_ms_per_token']:.2f} + "
                     f"{c['target_fwd_ms_per_token']:.2f} + {c['outside_ms_per_token']:.2f} = "
                     f"{c['ms_per_token']:.2f} |")
        L += ["", "Acceptance = accepted / verified drafts (drafts up to and including a round's first rejection; "
              "specref's statistic, computed the same way for transformers from the accepted drafts its loop reports "
              "each round). Calls per token count every forward call, prefill included (assisted generation has no "
              "separate prefill: its first target call scores the prompt and the first drafts)."]
        rows = []
        for k in SPECULATIVE:
            c = S["configs"].get(k)
            if c and c.get("gamma_share"):
                share = ", ".join(f"{gg}: {100 * v:.1f}%" for gg, v in c["gamma_share"].items())
                rows.append(f"| {_label(k, args)} | {c['rounds']} | {c['tokens_per_round']:.2f} | "
                            f"{_f(c.get('accepted_per_drafted'), 3)} | {c['mean_gamma']:.2f} | "
                            f"{100 * c['zero_share']:.1f}% | {c['outside_ms_per_round']:.2f} | {share} |")
        if rows:
            L += ["", "Block sizes (drafts per round; g = 0 is a plain target step), all passes:", "",
                  "| configuration | rounds | tokens / round | accepted / drafted | mean g | g = 0 | outside ms / "
                  "round | share of rounds per g |", "|---|---|---|---|---|---|---|---|"] + rows
            stops = [f"{_label(k, args)}: {100 * S['configs'][k]['stop_share']:.1f}%" for k in (STOP, STOP_POLICY)
                     if "stop_share" in S["configs"].get(k, {})]
            if stops:
                L += ["", "With the confidence stop, g is the drafts of the round (the row's, at batch 1); share of "
                      "rounds the stop ended before the round's largest g: " + "; ".join(stops) + "."]
        tc = S.get("timed_costs")
        if tc:
            L += ["", f"The same costs over the timed passes: target one-token forward {tc['target_step_ms']:.3f} ms "
                  f"(specref target-only; prefill calls excluded), draft {tc['draft_step_ms']:.3f} ms, block of "
                  f"{g + 1} {tc['target_block_ms']:.3f} ms: c = {tc['c']:.3f}, verify_slope = "
                  f"{tc['verify_slope']:.3f}."]
        T, pv = S.get("target", {}), S.get("policy_vs", {})
        if T.get("measured") is not None:
            verdict = "**met**" if T["met"] else "**missed**"
            L += ["", f"Target \"{T['goal']}\": policy / assisted generation (default schedule) = "
                  f"{_r(pv.get('hf/assisted/default'))}: {verdict}"
                  + (" in every pass" if T["met_every_pass"] else (" (not in every pass)" if T["met"] else ""))
                  + f". Policy / assisted with constant {g}: {_r(pv.get('hf/assisted/constant'))}; policy / fixed "
                  f"gamma {g}: {_r(pv.get('specref/specdecode/fixed'))}."]
        for key, name in ((STOP, "stop_vs"), (STOP_POLICY, "stop_policy_vs")):
            sv = S.get(name)
            if sv:
                verdict = ("**met**" + (" in every pass" if sv["met_every_pass"] else " (not in every pass)")
                           if sv["met"] else "**missed**")
                L += ["", f"{_label(key, args)} / assisted generation (default schedule) = "
                      f"{_r(sv.get('hf/assisted/default'))} ({verdict}); / assisted with constant {g}: "
                      f"{_r(sv.get('hf/assisted/constant'))}; / fixed gamma {g}: "
                      f"{_r(sv.get('specref/specdecode/fixed'))}; / the policy: {_r(sv.get(POLICY))}."]
    if R.get("errors"):
        L += ["", "Errors: " + "; ".join(R["errors"])]
    L += ["", f"Total {R.get('total_seconds', '-')} s. Command: `python bench/assisted_cpu.py` (or "
          "`python bench/suite.py --assisted-cpu`)" + (" --smoke" if R.get("smoke") else "") + "."]
    return "\n".join(L) + "\n"


def render(path: str) -> int:
    """Rewrite ``<prefix>.json`` / ``<prefix>.md`` of a finished run from its own measurements."""
    with open(path) as fh:
        R = json.load(fh)
    if not isinstance(R, dict) or R.get("section") != "assisted-cpu":
        raise SystemExit(f"{path}: not a bench/assisted_cpu.py result")
    R["summary"] = summarize(R)
    prefix = strip_suffix(path)
    write_report(prefix, R, markdown(R))
    print(f"rewrote {prefix}.json and {prefix}.md")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the section with parsed arguments (``bench/suite.py --assisted-cpu`` calls this)."""
    restart()
    r = AssistedCpuRun(args)
    for step in (r.load, r.calibrate, r.timed, r.finish):
        step()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, RuntimeError, OSError) as err:
        print(f"bench/assisted_cpu.py: error: {err}", file=sys.stderr)
        sys.exit(2)
