"""Gap closed per lambda from an offline_eval.csv: (best_fixed - head) / (best_fixed - oracle).
usage: python gap.py CSV [HEAD ...]   (default: every non-baseline method)"""
import csv, sys
from collections import defaultdict
LAMS = (0.05, 0.1, 0.2, 0.3, 0.5)
FIXED = ("chow", "diff", "opt", "token_v1", "token_v2", "token_v3")
BASE = set(FIXED) | {"draft", "specdecode", "oracle"}
rows = list(csv.DictReader(open(sys.argv[1])))
by = defaultdict(dict)
for r in rows:
    by[(r["method"], r["loss"])][round(float(r["alpha"]), 6)] = r
heads = sys.argv[2:] or sorted({r["method"] for r in rows} - BASE)
def val(m, loss, lam, mode):
    c = by[(m, loss)]
    if mode == "prescribed":
        return float(c[round(lam, 6)]["l_spec"])
    return min(float(r["quality_loss"]) + lam * float(r["rejection_rate"]) for r in c.values())
print(f"positions: {rows[0]['rows']}")
for mode in ("prescribed", "tuned"):
    for loss in ("argmax", "sampled"):
        print(f"\n**{loss} 0-1 loss, {mode}** ({'alpha = lambda' if mode=='prescribed' else 'best over alpha grid'}); cells: L_spec (gap closed %)\n")
        print("| lambda | best fixed | " + " | ".join(heads) + " | oracle |")
        print("|---|---|" + "---|" * (len(heads) + 1))
        for lam in LAMS:
            bf, name = min((val(f, loss, lam, mode), f) for f in FIXED)
            orc = val("oracle", loss, lam, mode)
            cells = []
            for h in heads:
                v = val(h, loss, lam, mode)
                g = bf - orc
                cells.append(f"{v:.4f} ({100*(bf-v)/g:+.0f}%)" if g > 0.005 else f"{v:.4f} (gap {g:+.4f}: n/a)")
            print(f"| {lam:g} | {bf:.4f} ({name}) | " + " | ".join(cells) + f" | {orc:.4f} |")
