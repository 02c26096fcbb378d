"""The model zoo: registry, cards, name resolution, shipped tokenizers; pair tests need trained weights."""

import json

import pytest
import torch

from specref import loading, zoo
from specref.tasks import get_task

PAIRS = ["bible-en-es-t5", "stdlib-doc-t5", "arith-llama"]
BUILT = [p for p in PAIRS if zoo.is_built(p)]


def test_registry_and_specs():
    assert zoo.list_pairs() == PAIRS
    tasks = {p: zoo.get_spec(p).task for p in PAIRS}
    assert tasks == {"bible-en-es-t5": "translation", "stdlib-doc-t5": "summarization", "arith-llama": "reasoning"}
    for pair in PAIRS:
        assert zoo.get_spec(pair).family == get_task(tasks[pair]).model_family
    with pytest.raises(ValueError, match="unknown zoo pair"):
        zoo.get_spec("gpt2")


@pytest.mark.parametrize("pair", PAIRS)
def test_card_schema(pair):
    card = zoo.get_card(pair)
    for key in ("name", "task", "family", "architecture", "description", "built"):
        assert key in card
    assert card["name"] == pair and card["built"] == zoo.is_built(pair)
    if (zoo.pair_dir(pair) / "card.json").is_file():
        for key in ("models", "quality", "acceptance", "bars", "tokenizer", "data"):
            assert key in card, key
        for role in zoo.ROLES:
            assert card["models"][role]["params"] > 0
        metric = card["quality"]["metric"]
        assert metric == get_task(card["task"]).metric_name
        assert 0.0 <= card["acceptance"]["acceptance"] <= 1.0


def test_missing_pair_error_names_pair_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)  # a zoo without weights
    with pytest.raises(FileNotFoundError, match="arith-llama.*training.zoo.train_all"):
        loading.load_pair("arith-llama", device="cpu", dtype="float32")
    with pytest.raises(FileNotFoundError, match="not built"):
        zoo.resolve_model("bible-en-es-t5:draft")
    assert zoo.get_card("arith-llama")["built"] is False


def test_resolve_model(tmp_path):
    assert zoo.resolve_model("stdlib-doc-t5:tokenizer").endswith("stdlib-doc-t5/tokenizer")
    assert zoo.resolve_model("stdlib-doc-t5/tokenizer") == zoo.resolve_model("stdlib-doc-t5:tokenizer")
    assert zoo.resolve_model("stdlib-doc-t5", role="tokenizer").endswith("tokenizer")
    assert zoo.resolve_model("google/t5-small") == "google/t5-small"  # not a zoo name: passes through
    assert zoo.resolve_model(tmp_path) == str(tmp_path)  # an existing path wins
    with pytest.raises(ValueError, match="say which model"):
        zoo.resolve_model("arith-llama")
    with pytest.raises(ValueError, match="unknown role"):
        zoo.resolve_model("arith-llama:verifier")


@pytest.mark.parametrize("pair", PAIRS)
def test_shipped_tokenizer(pair):
    from transformers import PreTrainedTokenizerFast

    tok = loading.load_tokenizer(pair)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    task = get_task(zoo.get_spec(pair).task)
    examples = task.load("test", limit=50)
    for e in examples:
        text = task.format_completion(e)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text  # byte-level BPE is lossless
    if zoo.get_spec(pair).family == "causal":
        assert tok.bos_token_id == 3 and tok.padding_side == "left"
        for e in examples:  # the prompt's tokens are a prefix of prompt + completion's
            prompt = tok(task.format_prompt(e))["input_ids"]
            full = tok(task.format_prompt(e) + task.format_completion(e))["input_ids"]
            assert full[: len(prompt)] == prompt and prompt[0] == 3
        assert all(len(tok.convert_ids_to_tokens(tok(d, add_special_tokens=False)["input_ids"])) == 3
                   for d in ("123", "905"))  # one token per digit
    else:
        assert tok("hello")["input_ids"][-1] == 1  # seq2seq inputs end with </s>


def test_trust_remote_code_never_set():
    from pathlib import Path

    import specref.zoo as module

    assert "trust_remote_code=" not in Path(module.__file__).read_text()


def test_zoo_is_data_below_the_loaders():
    """specref.loading builds on the zoo, so the zoo must not import it back (no loaders live here)."""
    import subprocess
    import sys

    code = "import sys, specref.zoo; print('specref.loading' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert not any(hasattr(zoo, name) for name in ("load_pair", "load_model", "load_tokenizer"))


def test_cli_lists_pairs(capsys):
    from specref.cli import main

    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert all(p in out for p in PAIRS)
    assert main(["zoo", "show", "arith-llama", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "arith-llama"
    assert main(["zoo", "show", "nope"]) == 2


needs_weights = pytest.mark.skipif(
    len(BUILT) < len(PAIRS),
    reason=f"zoo weights not trained yet for {sorted(set(PAIRS) - set(BUILT))} (training/zoo/README.md)")


@needs_weights
@pytest.mark.parametrize("pair", PAIRS)
def test_pair_loads_offline_and_decodes(pair):
    loaded = loading.load_pair(pair, device="cpu", dtype="float32")
    assert loaded.task.name == zoo.get_spec(pair).task and loaded.card["built"]
    for model in (loaded.draft, loaded.target):
        assert not model.training and next(model.parameters()).dtype == torch.float32
        assert model.config.vocab_size == len(loaded.tokenizer)
    assert sum(p.numel() for p in loaded.draft.parameters()) < sum(p.numel() for p in loaded.target.parameters())
    task = loaded.task
    examples = task.load("test", limit=3)
    tok = loaded.tokenizer
    batch = tok([task.format_prompt(e) for e in examples], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = loaded.target.generate(**batch, max_new_tokens=24, do_sample=False)
    if task.model_family == "causal":
        out = out[:, batch["input_ids"].shape[1]:]
    texts = tok.batch_decode(out, skip_special_tokens=True)
    assert all(t.strip() for t in texts)


@needs_weights
def test_zoo_size_budget():
    total = sum(f.stat().st_size for f in zoo.ZOO_DIR.rglob("*") if f.is_file())
    assert total <= 40 * 1024 * 1024


@needs_weights
@pytest.mark.parametrize("pair", PAIRS)
def test_pair_decodes_with_speculative_cascade(pair):
    decode = pytest.importorskip("specref.decode", reason="the decoder is not in this checkout")
    loaded = loading.load_pair(pair, device="cpu", dtype="float32")
    task = loaded.task
    examples = task.load("test", limit=3)
    tok = loaded.tokenizer
    batch = tok([task.format_prompt(e) for e in examples], return_tensors="pt", padding=True,
                padding_side="left")
    dec = decode.make_decoder(loaded.draft, loaded.target, "token_v3", alpha=0.3, gamma=5)
    out = dec.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=40, temperature=1.0, seed=0,
                       eos_token_id=tok.eos_token_id)
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in out.token_lists()]
    assert len(texts) == 3 and all(t.strip() for t in texts)
    if task.name == "reasoning":  # the worked-solution format survives cascading
        assert any("=" in t for t in texts)


def test_tokenizer_builder_reproduces_shipped_arith_tokenizer(tmp_path):
    pytest.importorskip("yaml")
    from training.zoo import build_tokenizers

    folder = build_tokenizers.build("arith-llama", tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).read_bytes() == (zoo.pair_dir("arith-llama") / "tokenizer" / name).read_bytes()


def test_hub_id_not_in_the_offline_cache_is_one_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in the cache .* HF_HUB_OFFLINE"):
        loading.load_model("some-org/some-model")
    with pytest.raises(FileNotFoundError, match="not in the cache .* HF_HUB_OFFLINE"):
        loading.load_tokenizer("some-org/some-model")
    assert list(tmp_path.iterdir()) == []  # nothing was fetched or created
