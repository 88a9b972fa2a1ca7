"""Benchmark of the evaluation yardsticks: FCD and KID floors (n real training images against the test split, in
the features of the project's classifier for the dataset) for every dataset with a classifier, and the
classifiers' test accuracy (recorded in their weights when they were trained).

    STUDIO_HOME=$(mktemp -d) .venv/bin/python bench/bench_evaluate.py --n 2000 --repeats 5 [--json out.json]

Prints one JSON object: per dataset the floors and their ranges over the draws, and the seconds each took
(with a cold cache: dataset parsing and test-set features included).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="", help="comma-separated datasets (default: all with a classifier)")
    parser.add_argument("--n", type=int, default=2000, help="training images per draw")
    parser.add_argument("--repeats", type=int, default=5, help="disjoint draws of n")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args()

    import torch

    from studio.classifier import CLASSIFIERS
    from studio.config import load_settings
    from studio.evaluate import floor_scores
    from studio.safetensors_io import read_metadata

    torch.set_num_threads(args.threads)
    settings = load_settings()
    results: dict = {"n": args.n, "repeats": args.repeats, "seed": args.seed, "load_average": os.getloadavg()[0]}
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()] or sorted(CLASSIFIERS):
        started = time.perf_counter()
        floor = floor_scores(dataset, args.n, args.repeats, args.seed, settings)
        floor["seconds"] = round(time.perf_counter() - started, 1)
        trained = json.loads(read_metadata(str(CLASSIFIERS[dataset])).get("metrics", "{}"))
        floor["classifier_test_accuracy"] = trained.get("test_accuracy")
        results[dataset] = floor
        print(f"{dataset}: FCD floor {floor['fcd_floor']:.3f} {floor['fcd_floor_range']}  KID floor "
              f"{floor['kid_floor']:.4f} {floor['kid_floor_range']}  ({floor['seconds']} s)", flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
