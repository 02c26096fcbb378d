"""One loading path for every command: device, dtype, models, tokenizers, draft/target pairs and heads.

A model ``spec`` is any of

* a local folder saved with ``save_pretrained`` (config, weights, and usually the tokenizer);
* a zoo name ``PAIR:draft`` / ``PAIR:target`` (``specref zoo`` lists the pairs; ``PAIR/draft`` works too);
* a ``.gguf`` file, or a folder holding exactly one ``.gguf`` and no ``config.json`` (transformers'
  ``from_pretrained(folder, gguf_file=...)``; needs the ``gguf`` package: ``pip install "specref[gguf]"``);
* a hub id (``org/name``), loaded through transformers' ordinary cache exactly as ``from_pretrained`` does:
  ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` are respected, and an id that is not cached while offline is a
  one-line error.

``trust_remote_code`` is never set: a checkpoint that needs custom code is refused. An existing local folder
wins over a zoo name it shadows, with a warning. Every failure a user can cause is a one-line
``ValueError`` / ``OSError`` (``FileNotFoundError``) naming the bad value, never a library traceback.

Tokenizers are never guessed: a zoo name gives its pair's tokenizer, a local folder must hold tokenizer
files (else transformers may hand back a library default whose vocabulary has nothing to do with the
model's), and the draft's and target's token->id maps must be equal (:func:`check_same_vocab`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specref.defaults import DTYPES

__all__ = [
    "TOKENIZER_FILES",
    "LoadedPair",
    "ModelSource",
    "check_same_vocab",
    "check_weights",
    "load_config",
    "load_head",
    "load_model",
    "load_pair",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "resolve_source",
]

#: Files that carry a tokenizer's vocabulary; ``tokenizer_config.json`` alone does not (it names a class,
#: which transformers then builds with its default vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "sentencepiece.model", "vocab.json", "vocab.txt", "tokenizer.tiktoken", "qwen.tiktoken")

#: local paths already warned about shadowing a zoo name (one warning per path, not one per load step)
_SHADOW_WARNED: set[str] = set()

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# ---- device and dtype -----------------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` if available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked
    against this machine (a clear error instead of a failure deep inside the first forward)."""
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use cpu or auto")
        count = torch.cuda.device_count()
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return text
    if text == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {name!r}: MPS is not available on this machine; use cpu or auto")
        return "mps"
    raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def resolve_dtype(name: Any, device: str) -> Any:
    """A torch dtype for one of :data:`specref.defaults.DTYPES` (``auto``: bfloat16 on a GPU, float32 elsewhere)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, name)


# ---- where a spec points --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points. ``kind``: ``zoo``, ``folder``, ``gguf`` or ``hub``; ``path`` is what
    ``from_pretrained`` gets (a folder or a hub id), ``gguf_file`` the file name inside it."""

    spec: str
    kind: str
    path: str
    gguf_file: str | None = None
    pair: str | None = None
    role: str | None = None

    def describe(self) -> str:
        if self.kind == "zoo":
            return f"zoo:{self.pair}:{self.role}"
        if self.kind == "gguf":
            return str(Path(self.path) / str(self.gguf_file))
        return self.path


def _zoo_of_path(path: Path) -> tuple[str, str] | None:
    """(pair, role) when ``path`` is one of the shipped zoo folders (its tokenizer lives beside it)."""
    from specref import zoo

    try:
        rel = path.resolve().relative_to(zoo.ZOO_DIR.resolve())
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) == 2 and parts[0] in zoo.list_pairs() and parts[1] in (*zoo.ROLES, "tokenizer"):
        return parts[0], parts[1]
    return None


def _zoo_name(text: str, role: str | None) -> tuple[str, str] | None:
    from specref import zoo

    for sep in (":", "/"):
        if sep in text:
            pair, which = text.split(sep, 1)
            if pair in zoo.list_pairs():
                return pair, which
    if text in zoo.list_pairs():
        return text, role or "tokenizer"
    return None


def resolve_source(spec: Any, role: str = "model") -> ModelSource:
    """Classify a model or tokenizer spec (no model library is imported here)."""
    from specref import zoo

    text = str(spec).strip() if spec is not None else ""
    if not text:
        raise ValueError(f"empty {role} name; give a model folder, a zoo name (PAIR:draft|target), a .gguf "
                         "file or a hub id")
    zoo_role = role if role in (*zoo.ROLES, "tokenizer") else None
    named = _zoo_name(text, zoo_role)
    path = Path(text).expanduser()
    if path.exists():
        if named is not None and text not in _SHADOW_WARNED:
            _SHADOW_WARNED.add(text)
            warnings.warn(f"the local path {text!r} shadows the zoo name {text!r}; loading the local path "
                          f"(give the zoo name from another folder to get the zoo model)", stacklevel=2)
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ValueError(f"{role} {text!r} is a file but not a .gguf checkpoint; give a model folder "
                                 "(save_pretrained), a .gguf file, a zoo name or a hub id")
            return ModelSource(text, "gguf", str(path.parent), gguf_file=path.name)
        in_zoo = _zoo_of_path(path)
        if in_zoo is not None:
            return ModelSource(text, "zoo", str(path), pair=in_zoo[0], role=in_zoo[1])
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(text, "gguf", str(path), gguf_file=ggufs[0])
            if len(ggufs) > 1:
                raise ValueError(f"{role} folder {text!r} holds {len(ggufs)} .gguf files ({', '.join(ggufs)}); "
                                 "name the one to load")
            if role != "tokenizer":
                raise FileNotFoundError(f"{role} folder {text!r} has no config.json (and no .gguf file): not a "
                                        "model saved with save_pretrained")
        return ModelSource(text, "folder", str(path))
    if named is not None:
        pair, which = named
        if which not in (*zoo.ROLES, "tokenizer"):
            raise ValueError(f"unknown role {which!r} in {text!r}; use {pair}:draft, {pair}:target or "
                             f"{pair}:tokenizer")
        if which == "tokenizer" and role in ("draft", "target", "model"):
            raise ValueError(f"{role} {text!r} names the zoo pair's tokenizer, not a model; use {pair}:draft or "
                             f"{pair}:target")
        folder = zoo.resolve_model(f"{pair}:{which}")  # raises (with the build hint) when not built
        return ModelSource(text, "zoo", folder, pair=pair, role=which)
    if _HUB_ID.match(text) and ".." not in text:
        return ModelSource(text, "hub", text)
    raise FileNotFoundError(
        f"{role} {text!r}: no such file or folder, not a zoo name (PAIR:draft or PAIR:target with PAIR one of "
        f"{', '.join(zoo.list_pairs())}) and not a hub id (org/name)"
    )


# ---- weights --------------------------------------------------------------------------------------------


def _check_safetensors(file: Path) -> None:
    """Refuse a truncated or corrupt safetensors file before it is memory-mapped (reading past the end of a
    truncated mapping kills the process instead of raising)."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise OSError(f"weights file {file} is truncated or corrupt: {size} bytes, too short for a safetensors "
                          "header")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise OSError(f"weights file {file} is truncated or corrupt: its header claims {n} bytes, the file has "
                          f"{size}")
        try:
            header = json.loads(handle.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise OSError(f"weights file {file} is corrupt: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise OSError(f"weights file {file} is corrupt: its safetensors header is not a table of tensors")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise OSError(f"weights file {file} is corrupt: tensor {name!r} has no valid data_offsets") from None
    if 8 + n + end != size:
        raise OSError(f"weights file {file} is truncated or corrupt: {size} bytes, its header describes "
                      f"{8 + n + end}")


def check_weights(folder: str | os.PathLike[str]) -> None:
    """Check every safetensors file of a model folder (and the shards its index names) before loading."""
    root = Path(folder)
    for index in sorted(root.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise OSError(f"weights index {index} is corrupt (no weight_map)") from None
        for shard in sorted(shards):
            if not (root / shard).is_file():
                raise FileNotFoundError(f"weights shard {root / shard} named by {index.name} is missing")
    for file in sorted(root.glob("*.safetensors")):
        _check_safetensors(file)


# ---- loading through transformers -----------------------------------------------------------------------


@contextlib.contextmanager
def _progress(enabled: bool, gguf: bool = False) -> Iterator[None]:
    """transformers' weight-loading bars on every command are noise unless asked for."""
    from transformers.utils import logging as tf_logging

    was = tf_logging.is_progress_bar_enabled()
    (tf_logging.enable_progress_bar if enabled else tf_logging.disable_progress_bar)()
    gguf_utils, bar = None, None
    if gguf and not enabled:
        # the GGUF reader draws its own tqdm bar, outside transformers' switch
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        bar = gguf_utils.tqdm
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        (tf_logging.enable_progress_bar if was else tf_logging.disable_progress_bar)()
        if gguf_utils is not None:
            gguf_utils.tqdm = bar


def _hub_error(src: ModelSource, role: str, err: BaseException) -> OSError:
    from huggingface_hub import constants

    first = " ".join(str(err).split())[:300]
    if constants.HF_HUB_OFFLINE:
        return FileNotFoundError(
            f"{role} {src.spec!r} is not a local folder or zoo name, and as a hub id it is not in the cache "
            f"({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE is set: download it first or unset HF_HUB_OFFLINE"
        )
    return FileNotFoundError(f"{role} {src.spec!r}: could not load it as a hub id: {first}")


def _kwargs(src: ModelSource) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": False}
    if src.kind != "hub":
        kw["local_files_only"] = True
    if src.gguf_file is not None:
        kw["gguf_file"] = src.gguf_file
    return kw


def _gguf_import_check(src: ModelSource) -> None:
    if src.kind == "gguf":
        import importlib.util

        if importlib.util.find_spec("gguf") is None:
            raise ImportError(f"loading the GGUF checkpoint {src.describe()} needs the gguf package: "
                              "pip install \"specref[gguf]\"")


def _fail(src: ModelSource, role: str, err: BaseException, what: str = "model") -> BaseException:
    if src.kind == "hub" and isinstance(err, OSError):
        return _hub_error(src, role, err)
    first = " ".join(str(err).split())[:300] or type(err).__name__
    return OSError(f"could not load the {role} {what} {src.describe()!r}: {first}")


def load_config(spec: Any, role: str = "model", progress: bool = False) -> Any:
    """The transformers config of any spec above (no weights are read)."""
    src = resolve_source(spec, role)
    import transformers as tf

    _gguf_import_check(src)
    try:
        with _progress(progress, gguf=src.kind == "gguf"):
            return tf.AutoConfig.from_pretrained(src.path, **_kwargs(src))
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - every loader failure becomes one line naming the checkpoint
        raise _fail(src, role, err) from err


def load_model(spec: Any, role: str = "model", device: str = "cpu", dtype: Any = "float32",
               progress: bool = False, tp_size: int = 1) -> Any:
    """A seq2seq or causal LM (picked from its config) on ``device`` in eval mode, from any spec above.

    ``tp_size`` > 1 (inside a torchrun of that many processes): this process's shard of the model, split by
    transformers' tensor-parallel plan (:mod:`specref.sharding` says what is refused)."""
    src = resolve_source(spec, role)
    import transformers as tf

    _gguf_import_check(src)
    if src.kind in ("zoo", "folder"):
        check_weights(src.path)
    torch_dtype = resolve_dtype(dtype, device)
    config = load_config(spec, role, progress)
    kw = _kwargs(src)
    if tp_size > 1:
        from specref.sharding import check_tp_config, tp_kwargs

        check_tp_config(config, tp_size, role)
        kw.update(tp_kwargs(tp_size))
    try:
        with _progress(progress, gguf=src.kind == "gguf"):
            auto = tf.AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else tf.AutoModelForCausalLM
            model = auto.from_pretrained(src.path, config=config, dtype=torch_dtype, **kw)
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - every loader failure becomes one line naming the checkpoint
        raise _fail(src, role, err) from err
    # a sharded model is already on this rank's device (transformers placed each shard)
    return (model if tp_size > 1 else model.to(device)).eval()


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _own_vocabulary(tok: Any) -> int:
    """How many tokens the tokenizer has beyond its added/special ones (a library default has ~none)."""
    added = set(getattr(tok, "added_tokens_encoder", {}) or {})
    return sum(1 for t in tok.get_vocab() if t not in added)


def load_tokenizer(spec: Any, role: str = "tokenizer") -> Any:
    """The tokenizer of a spec: a zoo name (a model role or the pair itself) gives the pair's tokenizer; a
    local folder must hold tokenizer files; GGUF files and hub ids load as transformers loads them."""
    src = resolve_source(spec, role)
    import transformers as tf

    if src.kind == "zoo":
        from specref import zoo

        src = ModelSource(src.spec, "zoo", zoo.resolve_model(f"{src.pair}:tokenizer"), pair=src.pair,
                          role="tokenizer")
    elif src.kind == "folder" and not _has_tokenizer_files(Path(src.path)):
        raise FileNotFoundError(
            f"{role} {src.spec!r}: the folder has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
            "save the tokenizer with the model, or give one with --tokenizer"
        )
    _gguf_import_check(src)
    kw = _kwargs(src)
    try:
        with _progress(False, gguf=src.kind == "gguf"):
            tok = tf.AutoTokenizer.from_pretrained(src.path, **kw)
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - one line naming the tokenizer
        raise _fail(src, role, err, "tokenizer") from err
    if _own_vocabulary(tok) < 2:
        raise ValueError(f"{role} {src.spec!r}: the tokenizer loaded has no vocabulary beyond its special tokens "
                         "(a library default, not the model's); give the model's tokenizer with --tokenizer")
    return tok


# ---- vocabularies ---------------------------------------------------------------------------------------


def _id_map(tok: Any) -> dict[int, str]:
    """id -> token over the vocabulary and the added/special tokens."""
    out = {int(i): str(t) for t, i in tok.get_vocab().items()}
    for i, added in (getattr(tok, "added_tokens_decoder", {}) or {}).items():
        out[int(i)] = str(getattr(added, "content", added))
    return out


def check_same_vocab(draft_tokenizer: Any, target_tokenizer: Any) -> None:
    """Refuse a pair whose tokenizers map tokens to different ids (same size is not enough: two BPEs trained
    on different data have the same size and nothing else in common). The error names the first difference."""
    if draft_tokenizer is target_tokenizer:
        return
    d, t = _id_map(draft_tokenizer), _id_map(target_tokenizer)
    if d == t:
        # the pad token is a batching convenience a user may set on one copy only; EOS and BOS change the text
        d_special = {k: getattr(draft_tokenizer, k, None) for k in ("eos_token_id", "bos_token_id")}
        t_special = {k: getattr(target_tokenizer, k, None) for k in d_special}
        diff = [k for k in d_special if d_special[k] != t_special[k]]
        if diff:
            k = diff[0]
            raise ValueError(f"draft and target tokenizers differ in {k}: {d_special[k]} vs {t_special[k]}; "
                             "speculative decoding needs one shared vocabulary")
        return
    for i in sorted(set(d) | set(t)):
        a, b = d.get(i), t.get(i)
        if a != b:
            def show(x: str | None) -> str:
                return "nothing" if x is None else repr(x)

            raise ValueError(
                f"draft and target vocabularies differ ({len(d)} vs {len(t)} tokens): id {i} is {show(a)} in the "
                f"draft's tokenizer and {show(b)} in the target's; speculative decoding needs one shared "
                "vocabulary (the same tokenizer for both models)"
            )


# ---- pairs ----------------------------------------------------------------------------------------------


@dataclass
class LoadedPair:
    """A draft/target pair ready for :func:`specref.decode.make_decoder`.

    ``tokenizer`` is the target's (or the one given), ``draft_tokenizer`` the draft's (checked equal in its
    token->id map); ``task`` is the zoo pair's task when both models come from one zoo pair, else None.
    """

    draft: Any
    target: Any
    tokenizer: Any
    draft_tokenizer: Any
    task: Any = None
    card: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    device: str = "cpu"
    dtype: Any = None

    def format_prompt(self, text: str) -> str:
        """``text`` through the zoo task's prompt template (unchanged without a task)."""
        if self.task is None:
            return text
        from specref.tasks import Example

        return self.task.format_prompt(Example(id="prompt", source=text, reference=""))


def _tokenizer_or_none(spec: str, role: str) -> Any:
    """The model's own tokenizer, or None when its folder simply has none (another is given)."""
    src = resolve_source(spec, role)
    if src.kind == "folder" and not _has_tokenizer_files(Path(src.path)):
        return None
    return load_tokenizer(spec, role)


def load_pair(pair: str | None = None, draft: Any = None, target: Any = None, tokenizer: Any = None,
              device: str = "auto", dtype: Any = "auto", progress: bool = False, tp_size: int = 1) -> LoadedPair:
    """Load a zoo pair by name, or a draft and a target from any specs (+ an optional shared tokenizer).

    ``--pair P`` is exactly ``--draft P:draft --target P:target``: one code path, so the same tokens come out.
    ``tp_size`` > 1 (inside a torchrun of that many processes): the target sharded over them, the draft whole
    on this rank's device (``cuda`` becomes ``cuda:LOCAL_RANK``).
    """
    from specref import zoo

    if pair is not None:
        if draft is not None or target is not None:
            raise ValueError("give either a zoo pair or a draft and a target, not both")
        zoo.get_spec(pair)  # an unknown pair: one line listing the zoo
        if not zoo.is_built(pair):
            raise FileNotFoundError(f"zoo pair {pair!r} is not built yet (no weights in {zoo.pair_dir(pair)}); "
                                    f"{zoo.BUILD_HINT}")
        draft, target = f"{pair}:draft", f"{pair}:target"
    elif draft is None or target is None:
        raise ValueError("give a zoo pair name, or both a draft and a target (model folders, zoo names "
                         "PAIR:draft / PAIR:target, .gguf files or hub ids)")
    draft, target = str(draft), str(target)
    d_src, t_src = resolve_source(draft, "draft"), resolve_source(target, "target")
    dev = resolve_device(device)
    if tp_size > 1:
        from specref.sharding import check_child, check_tp_device

        check_tp_device(dev, tp_size)
        check_child(tp_size)
        if dev == "cuda":
            import torch

            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(torch.device(dev))
    torch_dtype = resolve_dtype(dtype, dev)
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        own = [(r, _tokenizer_or_none(s, r)) for r, s in (("draft", draft), ("target", target))]
        for _, other in own:
            if other is not None:
                check_same_vocab(other, tok)
        dtok = own[0][1] if own[0][1] is not None else tok
    else:
        tok = load_tokenizer(target, "target")
        dtok = load_tokenizer(draft, "draft")
        if d_src.kind == "zoo" and t_src.kind == "zoo" and d_src.pair == t_src.pair:
            dtok = tok  # one shared zoo tokenizer, loaded once
    check_same_vocab(dtok, tok)
    draft_model = load_model(draft, "draft", dev, torch_dtype, progress)
    target_model = load_model(target, "target", dev, torch_dtype, progress, tp_size=tp_size)
    same_zoo = d_src.kind == "zoo" and t_src.kind == "zoo" and d_src.pair == t_src.pair
    task, card, name = None, {}, None
    if same_zoo:
        from specref.tasks import get_task

        name = d_src.pair
        task, card = get_task(zoo.get_spec(name).task), zoo.get_card(name)
    provenance: dict[str, Any] = {"pair": name} if same_zoo else {"draft": draft, "target": target}
    if not same_zoo:
        provenance.update(draft_source=d_src.kind, target_source=t_src.kind)
    if tokenizer is not None:
        provenance["tokenizer"] = str(tokenizer)
    if tp_size > 1:
        provenance["tp_size"] = tp_size
    return LoadedPair(draft=draft_model, target=target_model, tokenizer=tok, draft_tokenizer=dtok, task=task,
                      card=card, provenance=provenance, name=name, device=dev, dtype=torch_dtype)


# ---- heads ----------------------------------------------------------------------------------------------


def load_head(path: Any, map_location: str = "cpu") -> Any:
    """A deferral head saved by :func:`specref.heads.save` (format and weight checks live there)."""
    if path is None or not str(path).strip():
        raise ValueError("empty head path; give a folder saved by specref.heads.save")
    from specref.heads import load

    return load(path, map_location=map_location)
