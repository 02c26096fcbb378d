"""The zoo training pipeline on CPU: tiny models, a few steps, then finalize into a scratch zoo."""

import json
import tarfile

import pytest

pytest.importorskip("lightning.pytorch" if __import__("importlib").util.find_spec("lightning") else
                    "pytorch_lightning")

from specref.tasks import get_task  # noqa: E402
from training.zoo import data as zdata  # noqa: E402
from training.zoo import finalize, train_all  # noqa: E402
from training.zoo.config import load_config  # noqa: E402
from training.zoo.module import lr_factor, training_loss  # noqa: E402
from training.zoo.train_one import apply_overrides, load_tokenizer  # noqa: E402


def test_lr_schedule():
    assert lr_factor(0.0, 0.1, 0.05) == 0.0
    assert lr_factor(0.05, 0.1, 0.05) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1, 0.05) == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1, 0.05) == pytest.approx(0.05)
    assert lr_factor(2.0, 0.1, 0.05) == pytest.approx(0.05)  # past the budget: stays at the floor
    values = [lr_factor(x / 100, 0.1, 0.05) for x in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_plan_spreads_targets_over_devices():
    jobs = train_all.plan(["a", "b", "c"], ["0", "1"])
    assert [j[:2] for j in jobs[:3]] == [("a", "target"), ("b", "target"), ("c", "target")]
    assert [j[2] for j in jobs] == ["0", "1", "0", "1", "0", "1"]


def test_configs_and_overrides():
    for pair in ("bible-en-es-t5", "stdlib-doc-t5", "arith-llama"):
        cfg = load_config(pair)
        assert set(cfg["models"]) == {"draft", "target"} and cfg["models"]["target"]["lr"] > 0
    cfg = apply_overrides(load_config("arith-llama"), ["models.target.lr=5e-4", "difficulty.max_value=50"])
    assert cfg["models"]["target"]["lr"] == 5e-4 and cfg["difficulty"] == {"max_value": 50}
    with pytest.raises(ValueError):
        apply_overrides(cfg, ["no-equals-sign"])


@pytest.mark.parametrize("pair", ["bible-en-es-t5", "arith-llama"])
def test_training_loss_smoothing(pair):
    """Smoothing 0 is the model's own loss; smoothing > 0 equals a hand-computed smoothed cross-entropy
    over the same (shifted, for causal models) positions - so the shift and the ignored labels are right."""
    import torch

    from specref.zoo import get_spec
    from training.zoo.models import build_model

    torch.manual_seed(0)
    cfg = load_config(pair, smoke=True)
    tok = load_tokenizer(pair)
    model = build_model(pair, cfg["models"]["draft"]["arch"], tok).eval()
    rows = zdata.encode(tok, cfg, zdata.training_examples(cfg, "train")[:3])
    batch = zdata.Collator(get_spec(pair).family, tok.pad_token_id)(rows)
    with torch.no_grad():
        plain = training_loss(model, batch, 0.0)
        assert plain == pytest.approx(float(model(**batch).loss), rel=1e-6)
        smoothed = training_loss(model, batch, 0.1)
        logits, labels = model(**batch).logits, batch["labels"]
        if not model.config.is_encoder_decoder:
            logits, labels = logits[:, :-1], labels[:, 1:]
        keep = labels != -100
        logp = torch.log_softmax(logits[keep].float(), dim=-1)
        nll = -logp.gather(1, labels[keep].unsqueeze(1)).squeeze(1)
        expected = (0.9 * nll - 0.1 * logp.mean(dim=-1)).mean()
    assert float(smoothed) == pytest.approx(float(expected), rel=1e-5)
    # not a no-op: a random-init model is near uniform, so smoothing moves the loss only slightly, but by
    # far more than the tolerance above
    assert abs(float(smoothed) - float(plain)) > 10 * 1e-5 * float(plain)
    with pytest.raises(ValueError, match="label_smoothing"):
        training_loss(model, batch, 1.0)


def test_causal_encoding_masks_prompt():
    cfg = load_config("arith-llama", smoke=True)
    tok = load_tokenizer("arith-llama")
    task = get_task("reasoning")
    ex = task.load("train", limit=2)
    (ids, labels), _ = zdata.encode(tok, cfg, ex)
    n_prompt = len(tok(task.format_prompt(ex[0]))["input_ids"])
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == task.format_completion(ex[0])
    stream = iter(zdata.GeneratedProblems(cfg, tok, chunk=4))
    held_out = {e.source for e in task.load("test")}
    row = next(stream)
    assert tok.decode(row[0], skip_special_tokens=True).split("\nAnswer:")[0][len("Question: "):] not in held_out


def test_train_all_and_finalize_smoke(tmp_path):
    out, work, zoo_dir = tmp_path / "out", tmp_path / "work", tmp_path / "zoo"
    pairs = ["arith-llama", "bible-en-es-t5"]  # one causal and one seq2seq pair: every code path
    rc = train_all.main(["--out", str(out), "--work", str(work), "--devices", "cpu", "--max-steps", "3",
                         "--smoke", "--inprocess", "--pairs", *pairs])
    assert rc == 0
    for pair in pairs:
        with tarfile.open(out / f"{pair}.tar") as tar:
            names = set(tar.getnames())
        for part in ("draft", "target"):
            assert {f"{part}/config.json", f"{part}/model.safetensors", f"{part}/generation_config.json"} <= names
        assert "tokenizer/tokenizer.json" in names
    with tarfile.open(out / "eval.tar") as tar:
        names = set(tar.getnames())
        run = json.loads(tar.extractfile("run.json").read())
    assert {"arith-llama/draft/predictions.json", "bible-en-es-t5/acceptance.json", "run.json"} <= names
    assert run["failed"] == [] and set(run["acceptance"]) == set(pairs)

    rc = finalize.main(["--from", str(out), "--into", str(zoo_dir)])
    assert rc == 1  # tiny untrained models cannot pass the quality bars
    for pair in pairs:
        card = json.loads((zoo_dir / pair / "card.json").read_text())
        assert card["bars"]["all_pass"] is False and card["bars"]["quality_gap"]["pass"] is False
        assert card["models"]["target"]["steps"] == 3 and card["models"]["draft"]["fp16_bytes"] > 0
        assert 0 <= card["acceptance"]["acceptance"] <= 1
        assert (zoo_dir / pair / "draft" / "model.safetensors").is_file()
        assert "## Quality bars" in (zoo_dir / pair / "MODEL_CARD.md").read_text()
    # a finalized folder loads with the standard from_pretrained, fp16 on disk -> fp32 in memory
    from specref.loading import load_model

    model = load_model(zoo_dir / "arith-llama" / "target")
    assert not model.training and next(model.parameters()).dtype.is_floating_point


def test_finalize_bars_logic():
    quality = {"metric": "bleu",
               "greedy": {"draft": {"bleu": 10.0, "empty_rate": 0.0, "loop_rate": 0.0},
                          "target": {"bleu": 14.0, "empty_rate": 0.0, "loop_rate": 0.01}},
               "sampled_t1": {"draft": {"bleu": 5.0, "empty_rate": 0.0, "loop_rate": 0.0},
                              "target": {"bleu": 8.0, "empty_rate": 0.0, "loop_rate": 0.0}}}
    bars = finalize.check_bars("translation", quality, 0.7)
    assert bars["all_pass"]
    assert not finalize.check_bars("translation", quality, 0.95)["acceptance"]["pass"]
    quality["greedy"]["target"]["bleu"] = 12.0
    assert not finalize.check_bars("translation", quality, 0.7)["quality_gap"]["pass"]
    quality["greedy"]["draft"]["loop_rate"] = 0.5
    assert not finalize.check_bars("translation", quality, 0.7)["non_degenerate"]["pass"]


def test_finalize_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_all"):
        finalize.finalize(tmp_path, tmp_path / "zoo")


def test_variants_train_score_assemble_finalize(tmp_path, capsys):
    """The experiment loop on CPU: two target variants and one draft variant of a T5 pair, scored, then the
    chosen pair assembled (acceptance measured here) and finalized into a scratch zoo."""
    from training.zoo import variants

    pair, out = "bible-en-es-t5", tmp_path / "out"
    common = ["--pair", pair, "--out", str(out), "--max-steps", "2", "--smoke", "--inprocess", "--devices", "cpu",
              "--work", str(tmp_path / "work")]
    assert variants.main(["train", "--role", "target", "--variant", "a", "--variant", "ls", "label_smoothing=0.1",
                          "models.target.lr=2e-3", *common]) == 0
    assert variants.main(["train", "--role", "draft", "--variant", "base", *common]) == 0
    tars = sorted(out.glob("*.tar"))
    assert [t.name for t in tars] == ["draft-base.tar", "target-a.tar", "target-ls.tar"]
    logged = json.loads((tmp_path / "work" / pair / "target-ls" / "log.json").read_text())
    assert logged["optim"]["label_smoothing"] == 0.1 and logged["optim"]["lr"] == 2e-3

    capsys.readouterr()
    assert variants.main(["score", "--pair", pair, *map(str, tars), "--json", str(tmp_path / "s.json")]) == 0
    table = capsys.readouterr().out
    assert "| target-ls |" in table and "bleu greedy" in table
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [r["variant"] for r in rows] == ["draft-base", "target-a", "target-ls"]
    assert all(0 <= r["greedy"]["loop_rate"] <= 1 and r["n"] > 0 for r in rows)

    assembled = tmp_path / "pair"
    assert variants.main(["assemble", "--pair", pair, "--target", str(out / "target-ls.tar"),
                          "--draft", str(out / "draft-base.tar"), "--out", str(assembled)]) == 0
    zoo_dir = tmp_path / "zoo"
    assert finalize.main(["--from", str(assembled), "--into", str(zoo_dir), "--pairs", pair]) == 1  # untrained
    card = json.loads((zoo_dir / pair / "card.json").read_text())
    assert card["models"]["target"]["optim"]["label_smoothing"] == 0.1
    assert 0 <= card["acceptance"]["acceptance"] <= 1 and card["training_run"]["minutes"] == {"draft": None,
                                                                                              "target": None}
    assert "budget unknown" in (zoo_dir / pair / "MODEL_CARD.md").read_text()


def test_variants_refuse_bad_input(tmp_path):
    from training.zoo import variants

    with pytest.raises(ValueError, match="KEY=VALUE"):
        variants.parse_variants([["a", "lr"]], "target")
    with pytest.raises(ValueError, match="twice"):
        variants.parse_variants([["a"], ["a"]], "target")
    with pytest.raises(ValueError, match="starts with its name"):
        variants.parse_variants([["lr=1"]], "target")
    assert variants.parse_variants([["a", "lr=1e-3", "models.draft.lr=2"]], "target") == {
        "a": ["models.target.lr=1e-3", "models.draft.lr=2"]}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a trained variant"):
        variants.open_variant(tmp_path / "empty", tmp_path)
    with pytest.raises(FileNotFoundError):
        variants.open_variant(tmp_path / "nope.tar", tmp_path)


# Where a config knowingly differs from the shipped model (an experiment not yet installed): key -> shipped.
# Update this when a retrained model is installed (its card then records the config it was trained with).
SHIPPED_DEVIATIONS: dict = {}


@pytest.mark.parametrize("pair", ["bible-en-es-t5", "stdlib-doc-t5", "arith-llama"])
def test_configs_reproduce_the_shipped_models(pair):
    """train_all re-creates the shipped zoo: every config matches the architecture and optimisation its
    model card records, except the deviations listed above (see training/zoo/EXPERIMENTS.md)."""
    from specref.zoo import ZOO_DIR

    cfg = load_config(pair)
    card = json.loads((ZOO_DIR / pair / "card.json").read_text())
    for role in ("draft", "target"):
        spec, shipped = cfg["models"][role], card["models"][role]
        now = {**spec["arch"], **{k: spec[k] for k in shipped["optim"]}}
        was = {**shipped["arch"], **shipped["optim"]}
        def same(a, b):  # YAML lists and JSON lists, YAML floats and JSON floats
            return list(a) == b if isinstance(b, list) and isinstance(a, (list, tuple)) else a == b

        diff = {k: was[k] for k in was if not same(now.get(k), was[k])}
        assert diff == SHIPPED_DEVIATIONS.get((pair, role), {}), (role, diff)
        budget = card["training_run"]["minutes"]  # one budget for the run, or one per model
        assert spec["minutes"] == pytest.approx(budget[role] if isinstance(budget, dict) else budget), role


@pytest.mark.parametrize("n,batch,chunk,drop_last", [(103, 8, 4, True), (103, 8, 4, False), (64, 8, 3, True),
                                                     (5, 8, 2, False)])
def test_length_buckets_cover_each_row_once_in_homogeneous_batches(n, batch, chunk, drop_last):
    import random

    import torch

    rng = random.Random(n)
    lengths = [rng.randint(3, 120) for _ in range(n)]
    sampler = zdata.LengthBuckets(lengths, batch, chunk, torch.Generator().manual_seed(0), drop_last=drop_last)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat))  # no row twice in an epoch
        assert len(flat) == (n // batch * batch if drop_last else n)  # only a last partial batch is dropped
        assert all(len(b) == batch for b in batches) or not drop_last
    assert epochs[0] != epochs[1] or n <= batch  # reshuffled every epoch (one sorted batch cannot change)
    again = zdata.LengthBuckets(lengths, batch, chunk, torch.Generator().manual_seed(0), drop_last=drop_last)
    assert list(again) == epochs[0]  # reproducible from the seed

    def padding(batches):  # padded cells / real cells
        return sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(lengths[i] for b in batches for i in b)

    if n > 2 * batch:
        shuffled = list(range(n))
        random.Random(1).shuffle(shuffled)
        random_batches = [shuffled[i : i + batch] for i in range(0, len(shuffled), batch)]
        assert padding(epochs[0]) < 0.8 * padding(random_batches)
    with pytest.raises(ValueError, match=">= 1"):
        zdata.LengthBuckets(lengths, 0, 2, torch.Generator())


def test_warm_start_loads_weights_and_chains_logs(tmp_path):
    """``init_from`` continues from an earlier variant's weights (tied embeddings included) and the new log adds
    up both stages; a model of another shape is refused."""
    import torch
    from safetensors.torch import load_file

    from training.zoo import variants
    from training.zoo.models import build_model
    from training.zoo.train_one import warm_start

    pair, out, work = "bible-en-es-t5", tmp_path / "out", tmp_path / "work"
    common = ["--pair", pair, "--out", str(out), "--smoke", "--inprocess", "--devices", "cpu", "--work", str(work),
              "--role", "target"]
    assert variants.main(["train", "--variant", "one", "bucket_batches=2", "--max-steps", "3", *common]) == 0
    first = out / "target-one.tar"
    assert variants.main(["train", "--variant", "two", f"init_from={first}", "lr=5e-4", "--max-steps", "2",
                          *common]) == 0
    log = json.loads((work / pair / "target-two" / "log.json").read_text())
    assert [s["steps"] for s in log["stages"]] == [3, 2] and log["steps"] == 5
    assert log["stages"][0]["optim"]["bucket_batches"] == 2 and log["stages"][1]["optim"]["lr"] == 5e-4
    assert log["stages"][1]["init_from"] == str(first)

    cfg = load_config(pair, smoke=True)
    tokenizer = load_tokenizer(pair)
    model = build_model(pair, cfg["models"]["target"]["arch"], tokenizer)
    previous = warm_start(model, first)
    assert previous["steps"] == 3
    saved = load_file(str(work / pair / "target-one" / "model" / "model.safetensors"))
    own = model.state_dict()
    assert saved and all(torch.equal(own[k], v.float()) for k, v in saved.items())
    assert torch.equal(model.lm_head.weight, saved["shared.weight"].float())  # the tied copies follow

    wider = build_model(pair, {**cfg["models"]["target"]["arch"], "d_ff": 96}, tokenizer)
    with pytest.raises(ValueError, match="shapes differ"):
        warm_start(wider, first)
    with pytest.raises(FileNotFoundError, match="init_from"):
        warm_start(model, tmp_path / "missing.tar")


def test_variants_keep_models_ships_only_the_best_weights(tmp_path, capsys):
    from training.zoo import variants

    pair, out = "bible-en-es-t5", tmp_path / "out"
    assert variants.main(["train", "--pair", pair, "--role", "target", "--out", str(out), "--max-steps", "2",
                          "--smoke", "--inprocess", "--devices", "cpu", "--work", str(tmp_path / "work"),
                          "--variant", "a", "--variant", "b", "lr=3e-3", "--keep-models", "1"]) == 0
    rows = json.loads((out / "scores.json").read_text())
    best = max(rows, key=lambda r: r["greedy"]["metric"])["variant"]
    other = ({"target-a", "target-b"} - {best}).pop()
    assert sorted(p.name for p in out.glob("*.tar")) == sorted([f"{best}.tar", f"{other}.nomodel.tar"])
    with tarfile.open(out / f"{other}.nomodel.tar") as tar:
        names = tar.getnames()
    assert f"{other}/log.json" in names and not any("/model/" in n or n.endswith("samples.pt") for n in names)
    capsys.readouterr()
    assert variants.main(["score", "--pair", pair, str(out / f"{best}.tar"), str(out / f"{other}.nomodel.tar")]) == 0
    assert f"| {other} |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a trained variant"):  # no weights: cannot be assembled
        variants.open_variant(out / f"{other}.nomodel.tar", tmp_path / "scratch")


@pytest.mark.parametrize("pair", ["bible-en-es-t5", "stdlib-doc-t5", "arith-llama"])
def test_every_shipped_pair_passes_its_quality_bars(pair):
    """The issue's bars hold for what ships: recomputed from the card's own measurements (so a card cannot
    claim a pass its numbers do not support), on the whole test split, and the MODEL_CARD says so."""
    from specref.tasks import get_task
    from specref.zoo import ZOO_DIR

    card = json.loads((ZOO_DIR / pair / "card.json").read_text())
    assert card["quality"]["n"] == len(get_task(card["task"]).load("test"))
    bars = finalize.check_bars(card["task"], card["quality"], card["acceptance"]["acceptance"])
    assert bars == json.loads(json.dumps(card["bars"]))  # JSON round trip: tuples -> lists
    assert bars["all_pass"], {k: v for k, v in bars.items() if k != "all_pass" and not v["pass"]}
    assert "All bars pass: **True**." in (ZOO_DIR / pair / "MODEL_CARD.md").read_text()


def test_train_all_needs_a_budget(tmp_path, monkeypatch, capsys):
    """Without --minutes / --max-steps each model's config `minutes` is the budget; a smoke run or a config
    without one is refused before anything trains."""
    with pytest.raises(SystemExit):
        train_all.main(["--out", str(tmp_path), "--smoke", "--devices", "cpu"])
    import training.zoo.config as config  # main imports load_config from here when it runs

    original = config.load_config

    def without_minutes(pair, smoke=False):
        cfg = original(pair, smoke)
        cfg["models"]["draft"]["minutes"] = None
        return cfg

    monkeypatch.setattr(config, "load_config", without_minutes)
    with pytest.raises(SystemExit):
        train_all.main(["--out", str(tmp_path), "--devices", "cpu", "--pairs", "bible-en-es-t5"])
    assert "bible-en-es-t5/draft" in capsys.readouterr().err
