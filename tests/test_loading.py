"""specref.loading: specs (folders, zoo names, GGUF, hub ids through a fake offline cache), tokenizers that are
never a library default, the token->id vocabulary check, truncated weights, and reproduce --config refusing a
mismatched pair. Everything is offline: tiny models built here, the zoo, or a fake hub cache in tmp_path."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from specref import loading, zoo
from specref.cli import main
from specref.decode.testing import tiny_pair, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama draft/target saved with their tokenizer, and a copy of the target without tokenizer files."""
    root = tmp_path_factory.mktemp("tiny")
    tok = tiny_tokenizer()
    draft, target = tiny_pair("llama", vocab=8, draft_noise=0.3, init=0.3)
    for name, model in (("draft", draft), ("target", target)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    target.save_pretrained(root / "bare")  # weights and config only
    return root


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- specs ----------------------------------------------------------------------------------------------


def test_sources(tiny, tmp_path):
    assert loading.resolve_source("bible-en-es-t5:draft", "draft").kind == "zoo"
    assert loading.resolve_source("bible-en-es-t5/target", "target").role == "target"
    shipped = loading.resolve_source(str(zoo.pair_dir("arith-llama") / "draft"), "draft")
    assert (shipped.kind, shipped.pair, shipped.role) == ("zoo", "arith-llama", "draft")  # the folder itself
    assert loading.resolve_source(str(tiny / "draft"), "draft").kind == "folder"
    assert loading.resolve_source("org/model", "target").kind == "hub"
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        loading.resolve_source("/no/such/model", "draft")
    with pytest.raises(ValueError, match="unknown role 'verifier'"):
        loading.resolve_source("arith-llama:verifier", "draft")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        loading.resolve_source(str(tmp_path), "draft")
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="holds 2 .gguf files"):
        loading.resolve_source(str(tmp_path), "draft")
    (tmp_path / "b.gguf").unlink()
    src = loading.resolve_source(str(tmp_path), "draft")
    assert (src.kind, src.gguf_file) == ("gguf", "a.gguf")


def test_local_folder_shadowing_a_zoo_name_warns(tiny, tmp_path, monkeypatch):
    shutil.copytree(tiny / "draft", tmp_path / "arith-llama" / "draft")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "_SHADOW_WARNED", set())
    with pytest.warns(UserWarning, match="shadows the zoo name 'arith-llama/draft'"):
        src = loading.resolve_source("arith-llama/draft", "draft")
    assert src.kind == "folder"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loading.resolve_source("arith-llama:draft", "draft").kind == "zoo"  # no such local path


def test_device_and_dtype():
    assert loading.resolve_device("auto") in ("cpu", "cuda")
    assert loading.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        loading.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            loading.resolve_device("cuda:1")
    assert loading.resolve_dtype("auto", "cpu") == torch.float32
    assert loading.resolve_dtype("auto", "cuda:0") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        loading.resolve_dtype("int8", "cpu")


# ---- tokenizers and vocabularies ------------------------------------------------------------------------


def test_folder_without_tokenizer_is_refused_not_defaulted(tiny):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        loading.load_tokenizer(str(tiny / "bare"))
    # with a tokenizer given, the bare folder is fine
    pair = loading.load_pair(draft=str(tiny / "draft"), target=str(tiny / "bare"), tokenizer=str(tiny / "draft"),
                             device="cpu")
    assert pair.task is None and pair.provenance["tokenizer"] == str(tiny / "draft")


def test_zoo_names_get_their_pairs_tokenizer():
    for spec in ("bible-en-es-t5:draft", "bible-en-es-t5:target", "bible-en-es-t5",
                 str(zoo.pair_dir("bible-en-es-t5") / "draft")):
        tok = loading.load_tokenizer(spec)
        assert len(tok) == 4096 and tok("In the beginning")["input_ids"][-1] == tok.eos_token_id


def test_check_same_vocab_compares_the_maps_not_the_sizes():
    a, b = loading.load_tokenizer("bible-en-es-t5"), loading.load_tokenizer("stdlib-doc-t5")
    assert len(a) == len(b)  # same size, different tokens: the case a size check lets through
    with pytest.raises(ValueError, match=r"id \d+ is '.+' in the draft's tokenizer and '.+' in the target's"):
        loading.check_same_vocab(b, a)
    loading.check_same_vocab(a, loading.load_tokenizer("bible-en-es-t5:target"))  # equal maps pass
    c = loading.load_tokenizer("bible-en-es-t5")
    c.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="'<extra>' in the target's"):
        loading.check_same_vocab(a, c)
    d = loading.load_tokenizer("bible-en-es-t5")
    d.eos_token = "<unk>"  # same map, another end of text
    with pytest.raises(ValueError, match="differ in eos_token_id: 1 vs 2"):
        loading.check_same_vocab(a, d)


def test_mismatched_pair_is_refused_before_loading_weights(monkeypatch):
    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the vocabulary check")

    monkeypatch.setattr(loading, "load_model", no_weights)
    with pytest.raises(ValueError, match="vocabularies differ"):
        loading.load_pair(draft="stdlib-doc-t5:draft", target="bible-en-es-t5:target", device="cpu")


def test_pair_name_and_zoo_names_are_one_path():
    a = loading.load_pair("arith-llama", device="cpu")
    b = loading.load_pair(draft="arith-llama:draft", target="arith-llama:target", device="cpu")
    assert a.provenance == b.provenance == {"pair": "arith-llama"}
    assert a.task.name == b.task.name == "reasoning" and a.card == b.card
    assert b.format_prompt("1 + 1?") == "Question: 1 + 1?\nAnswer:"
    for x, y in ((a.draft, b.draft), (a.target, b.target)):
        assert all(torch.equal(p, q) for p, q in zip(x.state_dict().values(), y.state_dict().values()))


# ---- weights --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [4, 100, -16])
def test_truncated_safetensors_is_one_line_naming_the_file(tiny, tmp_path, keep):
    folder = tmp_path / "model"
    shutil.copytree(tiny / "target", folder)
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:keep])
    with pytest.raises(OSError, match=f"weights file {file} is truncated or corrupt"):
        loading.load_model(str(folder), "target")


def test_truncated_weights_through_the_cli(tiny, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny / "target", folder)
    file = folder / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    rc = main(["generate", "--draft", str(tiny / "draft"), "--target", str(folder), "--prompt", "a b"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert f"weights file {file} is truncated or corrupt" in _one_error_line(out.err)


def test_missing_shard_is_named(tiny, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny / "target", folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "shard-2.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="shard-2.safetensors named by model.safetensors.index.json"):
        loading.load_model(str(folder), "target")


# ---- hub ids through a fake offline cache ---------------------------------------------------------------


def _fake_cache(root: Path, repo: str, source: Path) -> Path:
    """The HF_HUB_CACHE layout: models--org--name/{refs/main, snapshots/<sha>/...}."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    base = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, base / "snapshots" / sha)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(sha)
    return base


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    # what HF_HUB_OFFLINE=1 HF_HUB_CACHE=... set when the process starts (huggingface_hub reads them at import)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_loads_from_the_cache_as_from_pretrained_does(tiny, offline_cache, capsys):
    _fake_cache(offline_cache, "tiny-org/tiny-draft", tiny / "draft")
    _fake_cache(offline_cache, "tiny-org/tiny-target", tiny / "target")
    model = loading.load_model("tiny-org/tiny-target", "target")
    ref = loading.load_model(str(tiny / "target"), "target")
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), ref.state_dict().values()))
    argv = ["generate", "--prompt", "a b", "--max-new-tokens", "5", "--json"]
    assert main([*argv, "--draft", "tiny-org/tiny-draft", "--target", "tiny-org/tiny-target"]) == 0
    by_id = json.loads(capsys.readouterr().out)["tokens"]
    assert main([*argv, "--draft", str(tiny / "draft"), "--target", str(tiny / "target")]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == by_id


def test_hub_id_not_cached_offline_is_one_line(tiny, offline_cache, capsys, tmp_path):
    rc = main(["generate", "--draft", str(tiny / "draft"), "--target", "tiny-org/not-cached", "--prompt", "a"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    line = _one_error_line(out.err)
    assert "'tiny-org/not-cached'" in line and "not in the cache" in line and "HF_HUB_OFFLINE" in line
    assert list(offline_cache.iterdir()) == []  # nothing downloaded or created


# ---- GGUF -----------------------------------------------------------------------------------------------


def _write_llama_gguf(path: Path, vocab_tokens: list[str], merges: list[str], special: set[str]) -> torch.nn.Module:
    """A tiny random llama as llama.cpp writes it (q/k rows permuted), with a byte-level BPE tokenizer."""
    import gguf
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=len(vocab_tokens), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=3, eos_token_id=1,
                         pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(cfg).eval()

    def permute(w, n_head):  # llama.cpp's rotary layout for q and k
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(16)
    w.add_block_count(2)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(8)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab_tokens)
    w.add_token_types([3 if t in special else 1 for t in vocab_tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(3)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_unk_token_id(2)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(2):
        p = f"model.layers.{i}."
        for name, key in (("attn_norm", "input_layernorm"), ("attn_v", "self_attn.v_proj"),
                          ("attn_output", "self_attn.o_proj"), ("ffn_norm", "post_attention_layernorm"),
                          ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj")):
            w.add_tensor(f"blk.{i}.{name}.weight", sd[p + key + ".weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], 2))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def test_gguf_file_and_folder_load_as_transformers_loads_them(tmp_path, capsys):
    pytest.importorskip("gguf", reason="GGUF loading needs the gguf package (pip install 'specref[gguf]')")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF file")
    zoo_tok = loading.load_tokenizer("arith-llama")
    tokens = [t for t, _ in sorted(zoo_tok.get_vocab().items(), key=lambda kv: kv[1])]
    # transformers' GGUF BPE converter adds <|endoftext|> when the vocabulary lacks it: ship it in the file
    tokens.append("<|endoftext|>")
    raw = json.loads((zoo.pair_dir("arith-llama") / "tokenizer" / "tokenizer.json").read_text())
    merges = [" ".join(m) if isinstance(m, list) else m for m in raw["model"]["merges"]]
    file = tmp_path / "tiny.gguf"
    ref = _write_llama_gguf(file, tokens, merges, set(zoo_tok.all_special_tokens) | {"<|endoftext|>"})
    (tmp_path / "folder").mkdir()
    shutil.copy(file, tmp_path / "folder" / "tiny-q.gguf")

    capsys.readouterr()
    model = loading.load_model(str(file), "target")
    assert "GGUF tensors" not in capsys.readouterr().err  # no progress bar unless asked for
    ids = torch.tensor([zoo_tok("Question: 12 + 3\nAnswer:")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)
    tok = loading.load_tokenizer(str(tmp_path / "folder"))
    assert {t: i for t, i in tok.get_vocab().items() if t in zoo_tok.get_vocab()} == zoo_tok.get_vocab()
    with pytest.raises(ValueError, match="'<\\|endoftext\\|>' in the target's"):
        loading.check_same_vocab(zoo_tok, tok)  # the converter's extra token is a different vocabulary

    argv = ["generate", "--draft", str(file), "--target", str(tmp_path / "folder"), "--prompt", "1 + 2",
            "--max-new-tokens", "4", "--temperature", "0", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tokens"][0]) == 4


# ---- reproduce --config ----------------------------------------------------------------------------------


def _setup_yaml(tmp_path: Path, name: str, draft: str, target: str) -> Path:
    from specref.tasks import get_task

    data = tmp_path / "test.jsonl"
    with open(data, "w") as fh:
        for e in get_task("translation").load("test", limit=2):
            fh.write(json.dumps({"id": e.id, "source": e.source, "reference": e.reference}) + "\n")
    file = tmp_path / f"{name}.yaml"
    file.write_text(f"""name: {name}
pair: {name}-pair
models: {{family: seq2seq, draft: "{draft}", target: "{target}", dtype: float32}}
data: {{path: "{tmp_path}/{{split}}.jsonl", metric: bleu}}
decode: {{split: test, gamma: 3, max_examples: 2, max_new_tokens: 3, batch_size: 2, seeds: [0]}}
methods: [target, draft, specdecode]
""")
    return file


def test_reproduce_config_refuses_a_mismatched_pair(tmp_path, capsys):
    cfg = _setup_yaml(tmp_path, "mixed", "stdlib-doc-t5:draft", "bible-en-es-t5:target")
    out = tmp_path / "out"
    rc = main(["reproduce", "--config", str(cfg), "--out", str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: draft and target vocabularies differ" in err and "Traceback" not in err
    assert not (out / "mixed" / "points.csv").exists()


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", ".."])
def test_setup_name_must_stay_inside_the_output_folder(tmp_path, capsys, name):
    cfg = _setup_yaml(tmp_path, "ok", "bible-en-es-t5:draft", "bible-en-es-t5:target")
    cfg.write_text(cfg.read_text().replace("name: ok", f"name: '{name}'"))
    out = tmp_path / "out"
    rc = main(["reproduce", "--config", str(cfg), "--out", str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"name {name!r} must be a plain folder name" in _one_error_line(err)
    assert not out.exists() and not (tmp_path / "escape").exists()
