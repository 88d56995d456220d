"""Fuzz every reader with random mutations and count the outcomes (facekd.fuzzing).

  python benchmarks/bench_fuzz.py --cases 100000 --out /tmp/fuzz

Cases are spread evenly over the targets (RecordIO .rec/.idx/property, .bin, list file, CelebA,
IJB meta, config), each case one random edit of one file, seeded by its number so any case can be
replayed with --replay TARGET:CASE. Passing: 0 silent, 0 crash, 0 hang. Prints the counts per
target and outcome, the cases per second, and the first examples of each failing outcome.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from facekd.fuzzing import BUILDERS, OUTCOMES, build_targets, classify, mutate, quiet

FAILING = ("silent", "crash", "hang")


def run_case(targets, name: str, case: int, folder: Path) -> tuple[str, str]:
    target, expected = targets[name]
    files = mutate(target, random.Random(f"{name}:{case}"))
    return classify(target, folder, files, expected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None, help="folder for fuzz_results.json")
    parser.add_argument("--replay", default=None, metavar="TARGET:CASE", help="run one case and print its outcome")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        targets = build_targets(scratch)
        if args.replay:
            name, case = args.replay.split(":")
            print(run_case(targets, name, int(case), scratch / "replay"))
            return 0
        names = sorted(BUILDERS)
        counts = {name: collections.Counter() for name in names}
        examples = collections.defaultdict(list)
        start = time.perf_counter()
        with quiet():
            for case in range(args.cases):
                name = names[case % len(names)]
                outcome, detail = run_case(targets, name, case, scratch / "case")
                counts[name][outcome] += 1
                if outcome in FAILING and len(examples[outcome]) < 5:
                    examples[outcome].append(f"{name}:{case} {detail[:200]}")
                if case and case % 10_000 == 0:
                    print(f"{case} cases, {case / (time.perf_counter() - start):.0f}/s", file=sys.__stderr__, flush=True)
        seconds = time.perf_counter() - start
    total = collections.Counter()
    for name in names:
        total.update(counts[name])
        print(f"{name:10s} " + "  ".join(f"{o} {counts[name][o]}" for o in OUTCOMES))
    print(f"{'all':10s} " + "  ".join(f"{o} {total[o]}" for o in OUTCOMES))
    print(f"{args.cases} cases in {seconds:.0f} s ({args.cases / seconds:.0f} cases/s)")
    for outcome in FAILING:
        for example in examples[outcome]:
            print(f"  {outcome}: {example}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"cases": args.cases, "seconds": seconds, "per_target": {n: dict(counts[n]) for n in names},
                  "total": dict(total), "examples": dict(examples)}
        (args.out / "fuzz_results.json").write_text(json.dumps(result, indent=1))
    return 1 if any(total[o] for o in FAILING) else 0


if __name__ == "__main__":
    sys.exit(main())
