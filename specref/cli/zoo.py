"""``specref zoo``: list the embedded draft/target pairs with their cards; ``specref zoo show NAME``."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("zoo", help="list the embedded model pairs and their cards",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("list", "show"), default="list",
                        help="list every pair, or show one pair's card (default: list)")
    parser.add_argument("name", nargs="?", help="pair name (for show)")
    parser.add_argument("--json", action="store_true", help="print the card(s) as JSON (default: a table)")
    parser.set_defaults(func=run)


def _summary(card: dict) -> str:
    from specref import zoo

    if not card["built"]:
        return "not built (no weights yet)"
    q = card.get("quality", {})
    metric = q.get("metric", "?")
    greedy = q.get("greedy", {})
    params = {r: card.get("models", {}).get(r, {}).get("params") for r in zoo.ROLES}
    acc = card.get("acceptance", {}).get("acceptance")
    parts = [f"params draft {_millions(params['draft'])} / target {_millions(params['target'])}"]
    if greedy:
        parts.append(f"{metric} draft {greedy['draft'][metric]:.1f} / target {greedy['target'][metric]:.1f}")
    if acc is not None:
        parts.append(f"acceptance {acc:.2f}")
    if "bars" in card:
        parts.append("bars " + ("pass" if card["bars"]["all_pass"] else "FAIL"))
    return ", ".join(parts)


def _millions(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M"


def run(args: argparse.Namespace) -> int:
    from specref import zoo

    if args.action == "show":
        if not args.name:
            raise ValueError("say which pair: specref zoo show NAME (see `specref zoo`)")
        card = zoo.get_card(args.name)
        if args.json:
            print(json.dumps(card, indent=1, ensure_ascii=False))
            return 0
        markdown = zoo.pair_dir(args.name) / "MODEL_CARD.md"
        if markdown.is_file():
            print(markdown.read_text())
        else:
            print(f"{card['name']}: {card['description']}\n  task {card['task']}, {card['architecture']}\n"
                  f"  {_summary(card)}\n  {zoo.BUILD_HINT}")
        return 0
    if args.name:
        raise ValueError("`specref zoo` lists every pair; use `specref zoo show NAME` for one")
    cards = [zoo.get_card(name) for name in zoo.list_pairs()]
    if args.json:
        print(json.dumps(cards, indent=1, ensure_ascii=False))
        return 0
    for card in cards:
        print(f"{card['name']:<16} {card['task']:<14} {card['architecture']:<28} {_summary(card)}")
    return 0
