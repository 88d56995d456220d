"""Seed-paired differences between any two runs of a `facekd compare` result (compare.json).

`compare.md` pairs every method with its baseline; a claim such as "KT+KD beats KT" pairs two
methods. Runs are matched by seed; the interval is the paired t interval (facekd.evaluate.paired).

    python benchmarks/paired_runs.py runs/compare/compare.json resolution resolution:mode=kt [...]

prints, for each pair A B after the file, A - B in points for accuracy, TAR@FAR and rank-1.
"""

from __future__ import annotations

import argparse
import json

from facekd.evaluate.paired import paired_difference


def metric_values(run: dict, key: str) -> dict[int, float]:
    values = {}
    for seed, scores in zip(run["seeds"], run["scores"]):
        values[seed] = scores["tar"][key[4:]] if key.startswith("tar@") else scores[key]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compare_json")
    parser.add_argument("labels", nargs="+", help="pairs of run labels: A B [A B ...]")
    args = parser.parse_args()
    if len(args.labels) % 2:
        parser.error("labels come in pairs: A B [A B ...]")
    document = json.loads(open(args.compare_json).read())
    runs = {run["label"]: run for run in document["runs"]}
    keys = ["accuracy", *(f"tar@{far}" for far in document["teacher"]["scores"]["tar"]), "rank1"]
    print("| A | B | " + " | ".join(f"Δ {key}" for key in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for first, second in zip(args.labels[0::2], args.labels[1::2]):
        cells = []
        for key in keys:
            a, b = metric_values(runs[first], key), metric_values(runs[second], key)
            seeds = sorted(set(a) & set(b))
            diff = paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
            mark = " *" if diff.resolved else ""
            cells.append(f"{100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]{mark}")
        print(f"| {first} | {second} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
