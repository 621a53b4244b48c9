"""What ``import scope`` costs beyond ``import torch``, each measured in a fresh interpreter.

Prints the median over ``--repeats`` runs of: ``import torch``; ``import scope``; both; ``import scope``
followed by a first use that loads the heavy stack (``scope.load_sae`` resolves to sae-lens and
transformer-lens); and the overhead (``import torch; import scope``) - ``import torch``.

    python scripts/bench_import.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

SNIPPETS = {
    "import torch": "import torch",
    "import scope": "import scope",
    "import torch, scope": "import torch; import scope",
    "import scope; scope.load_sae (first use)": "import scope; scope.load_sae",
}


def seconds(code: str) -> float:
    timer = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", timer], check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in SNIPPETS}
    for _ in range(args.repeats):  # interleaved, so a noisy moment hits every snippet alike
        for name, code in SNIPPETS.items():
            times[name].append(seconds(code))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:45s} {value:6.3f} s (median of {args.repeats}; min {min(times[name]):.3f})")
    overhead = medians["import torch, scope"] - medians["import torch"]
    print(f"{'import scope beyond import torch':45s} {overhead:6.3f} s")


if __name__ == "__main__":
    main()
