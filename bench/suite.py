"""specref benchmark suite: one command, one GPU run, every number side by side.

What ONE run does (about 6-8 minutes on one H100; ``--budget-s`` skips optional parts when time runs short;
progress lines carry the elapsed time; results are rewritten after every section, so a run cut short still
leaves its numbers):

1. **Environment**: GPU name, versions, and the device's memory bandwidth measured with a large
   device-to-device copy (bytes read + written over time).
2. **Benchmark pair**, trained in the run on the Python sources present on the machine (the standard
   library, then site-packages): a byte-level BPE tokenizer (8192 tokens), a Llama target (~420M
   parameters: 24 layers, width 1024) trained ``--target-seconds`` with next-token cross-entropy, and a
   Llama draft (~35M: 4 layers, width 768, tied embeddings) distilled from it for ``--draft-seconds``.
   Numerically safe: bf16 autocast with fp32 master weights, warm-up then cosine learning rate, gradient
   clipping, steps with a non-finite loss or gradient skipped (and the learning rate halved), weights
   checked finite at the end. Acceptance rates are therefore real, not an accident of random weights.
3. **Decoding**, temperature 1, no EOS (every row generates ``--max-new-tokens``), held-out prompts of
   48-96 tokens, at batch sizes 1, 8, 16 and 32 (batch 1 = ``--requests`` prompts one after the other):
   specref's decoder with target-only, SpecDecode, SpecCascade [token_v3] (and ``learned`` when ``--head``
   is given) for each engine in ``--engines`` (``plain`` reference, ``fast``, ``graph`` = CUDA graphs of the
   model forwards, ``compile-graph`` = torch.compile + CUDA graphs, tried at batch 1 only and last), and
   transformers' ``generate`` (target-only, batched) and ``generate(assistant_model=draft)`` (batch 1, its
   limit; constant ``--gamma`` draft tokens). Tokens/s = generated tokens / wall time (synchronised), best
   of ``--repeats`` after one warm-up; per-request latency = wall time per request (batch 1) or per batch.
4. **Round profile**: share of round time outside the two models' forwards (rules, verification, sampling,
   bookkeeping, the host sync, idle gaps), from CUDA events around every forward
   (:class:`specref.decode.profile.RoundProfiler`), per batch size and engine.
5. **Bandwidth floor**: a random-init 1B-class Llama (TinyLlama-1.1B's shape) at batch 1 with a ~512-token
   context: mean target-forward time vs the floor (weight bytes + KV bytes) / measured bandwidth, per engine.
6. **Data-parallel sweep** (when 2 GPUs are visible): the trained pair, saved with a tokenizer and a
   JSON-lines task of held-out snippets, swept with ``torchrun -m specref.repro.distributed`` on 1 and on 2
   GPUs; decode-phase throughput ratio, and whether the merged CSVs agree.
7. JSON (everything) and a markdown table (``<out>.json``, ``<out>.md``), with the issue's targets checked.

Usage::

    PYTHONUNBUFFERED=1 python bench/suite.py --out bench/results/h100          # the GPU run
    python bench/suite.py --smoke --out /tmp/smoke                             # CPU, tiny, < 60 s
    python bench/suite.py --assisted-cpu --out bench/results/cpu-assisted      # CPU: policy vs assisted generation
    specref bench ...                                                           # the same, via the CLI

Needs torch and transformers 5.x; ``tokenizers`` optional (byte vocabulary without it); no network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import traceback
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench import clock  # noqa: E402
from bench.bandwidth_floor import bandwidth_floor  # noqa: E402
from bench.clock import elapsed, log  # noqa: E402
from bench.corpus import python_sources, train_tokenizer  # noqa: E402
from bench.data_parallel import dp_scaling  # noqa: E402
from bench.decoding import run_hf, run_ours  # noqa: E402
from bench.lazy import make_decoder, torch  # noqa: E402
from bench.models import build_pair, cast, n_params  # noqa: E402
from bench.output import slug, strip_suffix  # noqa: E402
from bench.pair_training import train  # noqa: E402
from bench.suite_report import Writer, markdown, summarize  # noqa: E402
from bench.timing import measure_bandwidth  # noqa: E402

__all__ = ["DESCRIPTION", "build_parser", "main", "markdown", "render", "run", "summarize"]


DESCRIPTION = "benchmark suite: train a pair, then decode speed vs transformers, overhead, bandwidth, data parallel"


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=DESCRIPTION, prog="bench/suite.py", add_help=add_help)
    ap.add_argument("--out", default=None,
                    help="output prefix: writes <out>.json and <out>.md; an existing folder gets "
                         "<folder>/<device-name>.{json,md} (default: bench/results/<device-name>)")
    ap.add_argument("--smoke", action="store_true", help="tiny models and budgets on the CPU (< 60 s)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    ap.add_argument("--budget-s", type=float, default=None, help="optional parts stop past this many seconds "
                    "(default 480; smoke 45)")
    ap.add_argument("--gamma", type=int, default=5, help="drafts per round (default: 5)")
    ap.add_argument("--alpha", type=float, default=0.3, help="token_v3 lenience (default: 0.3)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per request (default 128; smoke 8)")
    ap.add_argument("--batch-sizes", default=None, help="default 1,8,16,32 (smoke 1,2,4)")
    ap.add_argument("--requests", type=int, default=None,
                    help="prompts decoded one after the other at batch 1 (default 4; smoke 2)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per configuration, best kept (default: 1; --assisted-cpu: 3 paired passes)")
    ap.add_argument("--engines", default=None,
                    help="specref engines, in priority order (default on a GPU graph,compile-graph: the eager engines "
                         "take minutes at batch 1, add fast,plain to compare them; on a CPU fast,plain; smoke "
                         "fast,graph,plain: graph runs eagerly on a CPU)")
    ap.add_argument("--methods", default="target,specdecode,token_v3",
                    help="methods to time (default: target,specdecode,token_v3)")
    ap.add_argument("--head", default=None, help="a trained deferral head: adds the learned rule (default: none)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate (default: timed)")
    ap.add_argument("--target-seconds", type=float, default=None,
                    help="training time of the benchmark's target (default 90; smoke 3)")
    ap.add_argument("--draft-seconds", type=float, default=None,
                    help="training time of the benchmark's draft (default 45; smoke 2)")
    ap.add_argument("--corpus-mb", type=float, default=None, help="training corpus size (default 30; smoke 0.4)")
    ap.add_argument("--vocab", type=int, default=None, help="tokenizer vocabulary (default 8192; smoke 384)")
    ap.add_argument("--dp", choices=("auto", "on", "off"), default="auto",
                    help="data-parallel sweep (default: auto = when 2 GPUs are visible)")
    ap.add_argument("--dp-examples", type=int, default=96, help="examples of the data-parallel sweep (default: 96)")
    ap.add_argument("--dp-batch", type=int, default=8, help="batch size of the data-parallel sweep (default: 8)")
    ap.add_argument("--dp-new-tokens", type=int, default=64,
                    help="new tokens per example in the data-parallel sweep (default: 64)")
    ap.add_argument("--dp-timeout", type=float, default=240,
                    help="seconds before the data-parallel sweep is stopped (default: 240)")
    ap.add_argument("--eager-profile", choices=("auto", "on", "off"), default="auto",
                    help="also profile the plain and fast engines' SpecDecode rounds at batch 1 on one request "
                         "(default: auto = on a GPU)")
    ap.add_argument("--compile-reserve-s", type=float, default=60,
                    help="start a torch.compile configuration only with this much budget left (default: 60)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the prompts and decodes (default: 0)")
    ap.add_argument("--realistic", action="store_true",
                    help="run only the realistic-size section instead (bench/realistic.py: 7B target, 1B and "
                         "0.5B-class drafts, random bf16 weights; takes --out, --smoke, --device, --budget-s, "
                         "--gamma, --alpha, --max-new-tokens, --batch-sizes, --requests, --repeats, --no-hf, --seed)")
    ap.add_argument("--assisted-cpu", action="store_true",
                    help="run only the CPU comparison of the block-size policy with transformers' assisted generation "
                         "instead (bench/assisted_cpu.py: zoo pair arith-llama, 32 test prompts at batch 1, paired "
                         "passes; takes --out, --smoke, --gamma, --temperature, --max-new-tokens, --requests (the "
                         "prompts), --repeats, --seed)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="measure nothing: recompute the targets of a finished run's JSON and rewrite it and "
                         "its markdown after a change to the summary, leaving the measurements untouched "
                         "(default: measure)")
    return ap


def render(path: str) -> int:
    """Rewrite ``<prefix>.json`` / ``<prefix>.md`` of a finished run from its own measurements."""
    with open(path) as fh:
        R = json.load(fh)
    if not isinstance(R, dict) or "args" not in R:
        raise SystemExit(f"{path}: not a bench/suite.py result (no 'args')")
    batch_sizes = [int(b) for b in str(R["args"]["batch_sizes"]).split(",")]
    prefix = path[: -len(".json")] if path.endswith(".json") else path
    R["targets"] = summarize(R, batch_sizes)
    Writer(prefix, batch_sizes).write(R)  # not __call__: keep the run's own total_seconds
    print(f"rewrote {prefix}.json and {prefix}.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        return render(args.render)
    return run(args)



def _realistic(args: argparse.Namespace) -> int:
    """The realistic-size section (bench/realistic.py) with this parser's options."""
    from bench import realistic

    ns = realistic.build_parser().parse_args([])
    for k in ("out", "smoke", "device", "budget_s", "gamma", "alpha", "max_new_tokens", "batch_sizes", "requests",
              "seed"):
        setattr(ns, k, getattr(args, k))
    ns.repeats = 1 if args.repeats is None else args.repeats
    if args.no_hf:
        ns.parts = "core,compile,t5"
    return realistic.run(ns)


def _assisted_cpu(args: argparse.Namespace) -> int:
    """The CPU comparison with transformers' assisted generation (bench/assisted_cpu.py) with this parser's
    options; the ones left unset keep that section's defaults."""
    from bench import assisted_cpu

    ns = assisted_cpu.build_parser().parse_args([])
    for k in ("out", "smoke", "gamma", "temperature", "max_new_tokens", "repeats", "seed"):
        if getattr(args, k) is not None:
            setattr(ns, k, getattr(args, k))
    if args.requests is not None:
        ns.examples = args.requests
    return assisted_cpu.run(ns)


def _fill_defaults(args: argparse.Namespace, smoke: bool, cuda: bool) -> None:
    """The options left unset get their GPU or smoke defaults."""
    defaults = {"max_new_tokens": 8 if smoke else 128, "requests": 2 if smoke else 4,
                "target_seconds": 3 if smoke else 90, "draft_seconds": 2 if smoke else 45,
                "corpus_mb": 0.4 if smoke else 30, "vocab": 384 if smoke else 8192,
                "budget_s": 45 if smoke else 480, "batch_sizes": "1,2,4" if smoke else "1,8,16,32", "repeats": 1,
                # measured on H100 / H200: the eager engines need ~15 ms of host time per 24-layer forward, so
                # timing them at batch 1 ate most of a 480 s budget; graphs are 5-8x faster
                "engines": "fast,graph,plain" if smoke else ("graph,compile-graph" if cuda else "fast,plain")}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


class SuiteRun:
    """One run of the suite: its options, device, results ``R`` (written after every section), the trained
    pair and its prompts, and the decoders built so far. Each section is one method, called in order by
    :func:`run`."""

    def __init__(self, args: argparse.Namespace) -> None:
        for extra in ("func", "command"):
            if hasattr(args, extra):
                delattr(args, extra)
        self.args = args
        self.smoke = smoke = args.smoke
        self.device = device = args.device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        self.cuda = cuda = device.startswith("cuda")
        _fill_defaults(args, smoke, cuda)
        self.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        self.engines = [e for e in args.engines.split(",") if e]
        self.methods = [m for m in args.methods.split(",") if m]
        self.main_engines = [e for e in self.engines if not e.startswith("compile")]
        self.late_engines = [e for e in self.engines if e.startswith("compile")]
        if smoke:
            torch.set_num_threads(1)  # tiny models: threads only contend (and CI runs tests in parallel)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        gpu = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine() or "cpu")
        name = slug(gpu) + ("-smoke" if smoke else "")
        prefix = args.out or os.path.join(REPO, "bench", "results", name)
        if os.path.isdir(prefix) or prefix.endswith(os.sep):  # a folder: <folder>/<device-name>.{json,md}
            prefix = os.path.join(prefix, name)
        self.prefix = prefix = strip_suffix(prefix)
        self.write = Writer(prefix, self.batch_sizes)
        import transformers

        self.R: dict[str, Any] = {
            "smoke": smoke, "args": vars(args), "skipped": [], "errors": [],
            "env": {"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
                    "gpus": torch.cuda.device_count() if cuda else 0, "python": platform.python_version()}}
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        log(f"specref bench on {gpu} ({device}); torch {torch.__version__}, transformers {transformers.__version__}; "
            f"budget {args.budget_s:.0f} s; writing {prefix}.json/.md")
        self.decoders: dict[tuple[str, str], Any] = {}
        self.head: Any = None

    def over(self, frac: float) -> bool:
        """Past ``frac`` of the time budget (each optional part checks its own deadline)."""
        return elapsed() > frac * self.args.budget_s

    # 1. environment
    def environment(self) -> None:
        R = self.R
        R["env"]["bandwidth"] = measure_bandwidth(self.device, self.smoke)
        self.bw = R["env"]["bandwidth"]["gb_per_s"]
        log(f"memory bandwidth (device copy): {self.bw:.0f} GB/s")
        self.write(R)

    # 2. data, tokenizer, pair
    def train_pair(self) -> None:
        args, smoke, device, R = self.args, self.smoke, self.device, self.R
        texts = python_sources(int(args.corpus_mb * 1e6))
        split = max(1, int(len(texts) * 0.95))
        self.tok = tok = train_tokenizer(texts[:split], args.vocab, 1_000_000 if smoke else 8_000_000)
        train_ids = torch.tensor([i for ids in tok.encode_batch(texts[:split]) for i in ids], dtype=torch.long)
        self.held = [ids for ids in tok.encode_batch(texts[split:]) if len(ids) > 200]
        vocab = tok.vocab_size
        log(f"corpus: {len(texts)} files, {train_ids.numel() / 1e6:.1f}M training tokens, vocab {vocab}")
        with torch.device(device):  # initialise on the device: seconds instead of a minute for 420M on a CPU
            draft, target = build_pair(vocab, smoke)
        info: dict[str, Any] = {"draft_params": n_params(draft), "target_params": n_params(target),
                                "train_tokens": train_ids.numel(), "vocab": vocab}
        R["pair"] = info
        log(f"models: draft {info['draft_params'] / 1e6:.1f}M, target {info['target_params'] / 1e6:.1f}M parameters")
        bsz, seq = (4, 64) if smoke else (32, 512)
        warm = 5 if smoke else 100
        info["target_training"] = train(target, train_ids, args.target_seconds, device, bsz, seq, 3e-4, warmup=warm)
        tt = info["target_training"]
        log(f"target trained: {tt['steps']} steps ({tt['skipped_steps']} skipped), loss {tt['final_loss']}")
        dtype = torch.bfloat16 if self.cuda else torch.float32
        cast(target, dtype)
        info["draft_training"] = train(draft, train_ids, args.draft_seconds, device, bsz, seq, 5e-4, teacher=target,
                                       warmup=warm)
        dt = info["draft_training"]
        log(f"draft distilled: {dt['steps']} steps ({dt['skipped_steps']} skipped), KL {dt['final_loss']}")
        cast(draft, dtype).eval()
        cast(target, dtype).eval()
        for m in (draft, target):
            m.generation_config.eos_token_id = None
            m.generation_config.pad_token_id = 0
        self.draft, self.target = draft, target
        del train_ids
        if self.cuda:
            torch.cuda.empty_cache()
        self.write(R)

    def pick_prompts(self) -> None:
        """Held-out prompts (and their true continuations, for the data-parallel task)."""
        args, held = self.args, self.held
        rng = random.Random(args.seed)
        need = max(max(self.batch_sizes), args.requests, args.dp_examples)
        prompts, continuations = [], []
        for ids in held * (1 + need // max(1, len(held))):
            n = rng.randint(8, 16) if self.smoke else rng.randint(48, 96)
            if len(ids) > n + 65:
                s = rng.randint(0, len(ids) - n - 65)
                prompts.append(ids[s : s + n])
                continuations.append(ids[s + n : s + n + 64])
            if len(prompts) >= need:
                break
        self.prompts, self.continuations = prompts, continuations

    def load_head(self) -> None:
        """``--head``: the learned rule joins the methods."""
        if self.args.head:
            try:
                from specref import heads

                self.head = heads.load(self.args.head)
                self.methods.append("learned")
            except Exception as err:  # noqa: BLE001
                self.R["errors"].append(f"head: {err}")

    def decoder(self, method: str, engine: str) -> Any:
        key = (method, engine)
        if key not in self.decoders:
            args = self.args
            opts: dict[str, Any] = {"head": self.head} if method == "learned" else {}
            alpha = args.alpha if method in ("token_v3", "learned") else None
            self.decoders[key] = make_decoder(self.draft, self.target, method, alpha=alpha, gamma=args.gamma,
                                              engine=engine, **opts)
        return self.decoders[key]

    def ours(self, engine: str, method: str, b: int) -> None:
        dec_results, key = self.R["decode"], f"specref/{engine}/{method}/b{b}"
        try:
            dec_results[key] = run_ours(self.decoder(method, engine), self.prompts, b, self.args, self.device)
            r = dec_results[key]
            acc = r["acceptance_rate"]
            log(f"{key}: {r['tokens_per_s']:.1f} tok/s, {r['latency_ms']:.1f} ms/request"
                + (f", acceptance {acc:.3f}" if acc is not None else ""))
        except Exception as err:  # noqa: BLE001 - one failing configuration must not lose the others
            dec_results[key] = {"error": f"{type(err).__name__}: {err}"}
            self.R["errors"].append(f"{key}: {type(err).__name__}: {err}")
            log(f"{key}: ERROR {type(err).__name__}: {err}")
            traceback.print_exc()

    def hf(self, kind: str, b: int) -> None:
        dec_results, key = self.R["decode"], f"hf/{kind}/b{b}"
        try:
            dec_results[key] = run_hf(self.target, self.draft if kind == "assisted" else None, self.prompts, b,
                                      self.args, self.device)
            log(f"{key}: {dec_results[key]['tokens_per_s']:.1f} tok/s, {dec_results[key]['latency_ms']:.1f} ms/request")
        except Exception as err:  # noqa: BLE001
            dec_results[key] = {"error": f"{type(err).__name__}: {err}"}
            self.R["errors"].append(f"{key}: {type(err).__name__}: {err}")
            log(f"{key}: ERROR {err}")

    # 3. decoding
    def decode_grid(self) -> None:
        R = self.R
        R["decode"] = {}
        for b in self.batch_sizes:
            for eng in self.main_engines:
                for m in self.methods:
                    if self.over(0.75):
                        R["skipped"].append(f"specref/{eng}/{m}/b{b} (budget)")
                        continue
                    self.ours(eng, m, b)
            if not self.args.no_hf:
                if self.over(0.78):
                    R["skipped"].append(f"hf b{b} (budget)")
                else:
                    self.hf("target", b)
                    if b == 1:
                        self.hf("assisted", 1)
            self.write(R)

    def _profile(self, key: str, method: str, engine: str, b: int, args: argparse.Namespace) -> dict[str, Any]:
        self.R["profile"][key] = run_ours(self.decoder(method, engine), self.prompts, b, args, self.device,
                                          profile=True)["profile"]
        return self.R["profile"][key]

    # 4. round profile (CUDA events around the forwards)
    def profile_rounds(self) -> None:
        R = self.R
        R["profile"] = {}
        prof_engines = [e for e in ("fast", "graph") if e in self.main_engines] or self.main_engines[:1]
        for b in self.batch_sizes:
            for eng in prof_engines:
                for m in ("specdecode", "token_v3"):
                    if m not in self.methods:
                        continue
                    key = f"{eng}/{m}/b{b}"
                    if self.over(0.8):
                        R["skipped"].append(f"profile {key} (budget)")
                        continue
                    try:
                        s = self._profile(key, m, eng, b, self.args)
                        log(f"profile {key}: {s['round_us']:.0f} us/round, outside forwards "
                            f"{s['outside_us_per_round']:.0f} us ({100 * s['outside_share']:.1f}%)")
                    except Exception as err:  # noqa: BLE001
                        R["profile"][key] = {"error": f"{type(err).__name__}: {err}"}
                        log(f"profile {key}: ERROR {err}")

    def profile_eager(self) -> None:
        """The eager engines' rounds, one request each (seconds): on the first H100 run `fast` SpecDecode was
        half as fast as `plain`, although both launch the same kernels inside their forwards; per-role forward
        times of both, side by side in one run, say where that time goes."""
        args, R = self.args, self.R
        if args.eager_profile == "on" or (args.eager_profile == "auto" and self.cuda):
            one = argparse.Namespace(**{**vars(args), "requests": 1})
            for eng in ("plain", "fast"):
                key = f"{eng}/specdecode/b1"
                if key in R["profile"] or "specdecode" not in self.methods:
                    continue
                if self.over(0.8):
                    R["skipped"].append(f"profile {key} (budget)")
                    continue
                try:
                    log(f"profile {key}: {self._profile(key, 'specdecode', eng, 1, one)['round_us']:.0f} us/round")
                except Exception as err:  # noqa: BLE001
                    R["profile"][key] = {"error": f"{type(err).__name__}: {err}"}
                    log(f"profile {key}: ERROR {err}")
        self.write(R)

    # 5. bandwidth floor of a 1B-class target forward at batch 1
    def bandwidth(self) -> None:
        R, engines = self.R, self.engines
        if self.over(0.85):
            R["skipped"].append("bandwidth floor (budget)")
        else:
            bw_engines = [e for e in ("fast", "graph") if e in engines] or engines[:1]
            try:
                R["bandwidth_1b"] = bandwidth_floor(self.args, self.device, self.bw, bw_engines)
            except Exception as err:  # noqa: BLE001
                R["errors"].append(f"bandwidth: {type(err).__name__}: {err}")
                log(f"bandwidth: ERROR {err}")
        self.write(R)

    # 6. data-parallel sweep on 1 vs 2 GPUs
    def data_parallel(self) -> None:
        args, R, tok = self.args, self.R, self.tok
        n_gpus = torch.cuda.device_count() if self.cuda else 0
        want_dp = args.dp == "on" or (args.dp == "auto" and n_gpus >= 2)
        if not want_dp:
            R["dp"] = {"skipped": f"{n_gpus} GPU(s) visible; needs 2"}
            R["skipped"].append("data-parallel sweep (needs 2 GPUs)")
        elif self.over(0.8):
            R["dp"] = {"skipped": "time budget"}
            R["skipped"].append("data-parallel sweep (budget)")
        elif getattr(tok, "backend", None) is None:
            R["dp"] = {"skipped": "needs the tokenizers library"}
        else:
            pt = [(tok.decode(p), tok.decode(c)) for p, c in zip(self.prompts, self.continuations)][: args.dp_examples]
            try:
                R["dp"] = dp_scaling(args, self.draft, self.target, tok, pt, max(2, min(n_gpus, 2)))
            except Exception as err:  # noqa: BLE001
                R["dp"] = {"error": f"{type(err).__name__}: {err}"}
                R["errors"].append(f"dp: {err}")
                log(f"dp: ERROR {err}")
        self.write(R)

    # 7. torch.compile engines last (compilation takes tens of seconds per shape): first the 1B forward of
    # the bandwidth floor, then the pair at batch 1, each only if its compile is likely to fit the budget
    def compile_engines(self) -> None:
        args, R = self.args, self.R
        for eng in self.late_engines:
            if "bandwidth_1b" in R and elapsed() + args.compile_reserve_s < args.budget_s:
                try:
                    extra = bandwidth_floor(args, self.device, self.bw, [eng])
                    R["bandwidth_1b"]["engines"].update(extra["engines"])
                except Exception as err:  # noqa: BLE001
                    R["errors"].append(f"bandwidth {eng}: {type(err).__name__}: {err}")
            else:
                R["skipped"].append(f"bandwidth floor {eng} (budget)")
            self.write(R)
            for m in self.methods:
                if m == "learned":
                    continue
                if elapsed() + args.compile_reserve_s > args.budget_s:
                    R["skipped"].append(f"specref/{eng}/{m}/b1 (budget)")
                    continue
                self.ours(eng, m, 1)
                self.write(R)

    def finish(self) -> None:
        R = self.R
        R["total_seconds"] = round(elapsed(), 1)
        self.write(R)
        print("\n" + markdown(R, self.batch_sizes), flush=True)
        log(f"wrote {self.prefix}.json and {self.prefix}.md")


def run(args: argparse.Namespace) -> int:
    """Run the suite with parsed arguments (``specref bench`` calls this)."""
    if getattr(args, "realistic", False):
        return _realistic(args)
    if getattr(args, "assisted_cpu", False):
        return _assisted_cpu(args)
    clock.restart()
    suite = SuiteRun(args)
    for step in (suite.environment, suite.train_pair, suite.pick_prompts, suite.load_head, suite.decode_grid,
                 suite.profile_rounds, suite.profile_eager, suite.bandwidth, suite.data_parallel,
                 suite.compile_engines, suite.finish):
        step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
