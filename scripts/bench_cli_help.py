"""``scope --help`` time: this tree against a baseline commit, each run in a fresh interpreter,
the two alternating (a noisy moment hits both alike); medians and their ratio.

    python scripts/bench_cli_help.py --baseline 7951ce6 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMED = (
    "import time; t = time.perf_counter(); from scope.cli import main; "
    "code = main(['--help']); print(time.perf_counter() - t, file=__import__('sys').stderr)"
)


def seconds(tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", TIMED], env=env, capture_output=True, text=True, check=True)
    return float(done.stderr.strip().splitlines()[-1])


def checkout(rev: str, into: Path) -> Path:
    archive = into / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="7951ce6", help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        trees = {f"baseline {args.baseline}": checkout(args.baseline, Path(folder)), "this tree": ROOT}
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, tree in trees.items():
                times[name].append(seconds(tree))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"scope --help, {name:20s} {value:6.3f} s (median of {args.repeats}; min {min(times[name]):.3f})")
    baseline, current = medians.values()
    print(f"this tree / baseline: {current / baseline:.3f}x")


if __name__ == "__main__":
    main()
