"""Names and defaults shared by the library and the command line.

Nothing here imports torch or transformers, so ``specref --help`` (and every subcommand's help) can list
methods, engines and defaults without loading a model library. The library modules import their defaults
from here, so the Python API and the CLI cannot drift apart.
"""

from __future__ import annotations

#: Methods with a deferral rule, decoded by the speculative round loop.
RULE_METHODS = ("specdecode", "lossy", "ensemble", "chow", "diff", "opt", "token_v1", "token_v2", "token_v3", "learned")
#: Every decoding method: the rule methods, the single-model references and the sequential baselines.
METHODS = ("target", "draft", *RULE_METHODS, "token_cascade", "seq_cascade", "bild")

#: Decoding engines (docs/performance.md): identical outputs, different speed.
ENGINES = ("plain", "fast", "static", "graph", "compile", "compile-graph")
#: Engines with static shapes (preallocated caches, CUDA graphs, torch.compile).
STATIC_ENGINES = ("static", "graph", "compile", "compile-graph")
DEFAULT_ENGINE = "plain"

#: Model dtypes a user can ask for; ``auto`` = bfloat16 on a GPU, float32 elsewhere.
DTYPES = ("auto", "float32", "bfloat16", "float16")

DEFAULT_GAMMA = 5
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TEMPERATURE = 1.0
DEFAULT_SEED = 0

# What a position summary keeps (specref.position_summary) and so what a log stores (specref.logs.schema);
# here because both read them and `specref log --help` shows them.
DEFAULT_TOP_K = 32
#: Number of eta grid points ``eta_j = j / (G - 1)`` at which the tail excess is stored.
DEFAULT_TAIL_POINTS = 33
#: Alpha grid on which the baseline token rules are evaluated exactly at log time.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
#: The baseline token rules whose objective is logged exactly per alpha.
TOKEN_RULES = ("token_v1", "token_v2", "token_v3")
