"""Compare two runs' results.json value by value (what a refactor must leave unchanged).

    .venv/bin/python benchmarks/compare_results.py OLD/results.json NEW/results.json [--rename old=new ...]

Prints how many glued values are identical (raw value and shown text; for tables, every cell in
order, column labels aside), which differ (with the first differences) and which are absent."""
import argparse
import json


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW",
                        help="glue names renamed between the two runs")
    args = parser.parse_args()
    old, new = json.load(open(args.old)), json.load(open(args.new))
    renamed = dict(item.split("=", 1) for item in args.rename)
    same, differ, absent = [], [], []
    for key, a in old.items():
        b = new.get(renamed.get(key, key))
        if b is None:
            absent.append(key)
        elif a["kind"] == "table":
            cells_a = [x for column in a["value"].values() for x in column]
            cells_b = [x for column in b["value"].values() for x in column]
            if cells_a == cells_b:
                same.append(key)
            else:
                pairs = [(x, y) for x, y in zip(cells_a, cells_b) if x != y]
                differ.append(f"{key}: {len(pairs)} of {len(cells_a)} cells differ "
                              f"({len(cells_b)} cells now); first: {pairs[:2]}")
        elif a.get("value") == b.get("value") and a.get("text") == b.get("text"):
            same.append(key)
        else:
            differ.append(f"{key}: {str(a.get('text'))[:80]!r} -> {str(b.get('text'))[:80]!r}")
    added = sorted(set(new) - {renamed.get(k, k) for k in old})
    print(f"{len(same)} identical, {len(differ)} differ, {len(absent)} absent, {len(added)} new")
    for line in differ:
        print("differs:", line)
    print("absent:", ", ".join(absent) or "none")
    print("new:", ", ".join(added) or "none")


if __name__ == "__main__":
    main()
