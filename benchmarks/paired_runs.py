"""Seed-paired differences between any two runs of a `facekd compare` result (compare.json).

`compare.md` pairs every method with its baseline; a claim such as "KT+KD beats KT" pairs two
methods. Runs are matched by seed; the interval is the paired t interval (facekd.evaluate.paired).

    python benchmarks/paired_runs.py runs/compare/compare.json resolution resolution:mode=kt [...]

prints, for each pair A B after the file, A - B in points for accuracy, TAR@FAR and rank-1.
"""

from __future__ import annotations

import argparse
import json

from facekd.compare.report import interval, metrics
from facekd.compare.scoring import TestScores
from facekd.evaluate.paired import paired_difference


def scores_by_seed(run: dict) -> dict[int, TestScores]:
    return {seed: TestScores(**scores) for seed, scores in zip(run["seeds"], run["scores"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compare_json")
    parser.add_argument("labels", nargs="+", help="pairs of run labels: A B [A B ...]")
    args = parser.parse_args()
    if len(args.labels) % 2:
        parser.error("labels come in pairs: A B [A B ...]")
    document = json.loads(open(args.compare_json).read())
    runs = {run["label"]: scores_by_seed(run) for run in document["runs"]}
    columns = metrics(list(document["teacher"]["scores"]["tar"]))  # compare.md's columns
    print("| A | B | " + " | ".join(f"Δ {column.title}" for column in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for first, second in zip(args.labels[0::2], args.labels[1::2]):
        a, b = runs[first], runs[second]
        seeds = sorted(set(a) & set(b))
        cells = [interval(paired_difference([column.value(a[s]) for s in seeds], [column.value(b[s]) for s in seeds]))
                 for column in columns]
        print(f"| {first} | {second} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
