"""Alias of ``bench/suite.py`` for issue 3's side-by-side run (batch sizes 1 and 16, no data-parallel part).

Everything (corpus, tokenizer, the trained Llama pair, specref vs transformers' assisted generation) now
lives in the suite; this keeps the old command line working::

    python bench/gpu_decode.py --out bench/results/gpu_decode_h100     # writes .json and .md
    python bench/gpu_decode.py --smoke --out /tmp/smoke

Later options override the defaults given here (e.g. ``--batch-sizes 1,8,32``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suite import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--batch-sizes", "1,16", "--dp", "off", *sys.argv[1:]]))
