"""How long `import lightning_geo` takes next to the libraries it builds on, in fresh interpreters.

    python benchmarks/import_time.py [--repeats 7]

Each import runs in its own new Python process (nothing cached in memory, bytecode already on disk);
the table reports the median and the spread (min-max) of the wall time of the import statement alone,
and the ratio to `import torch` measured in the same invocation.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from lightning_geo.utils.table import format_table

MODULES = ("lightning_geo", "torch", "lightning.pytorch", "botorch")
_PROBE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def time_import(module: str, repeats: int) -> list[float]:
    """Seconds to import ``module``, once per fresh interpreter, ``repeats`` times."""
    return [
        float(
            subprocess.run(
                [sys.executable, "-c", _PROBE.format(module=module)], check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(repeats)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters per module")
    args = parser.parse_args()
    times = {module: time_import(module, args.repeats) for module in MODULES}
    torch_median = statistics.median(times["torch"])
    rows = [
        [
            f"import {module}",
            f"{statistics.median(t):.3f}",
            f"{min(t):.3f}-{max(t):.3f}",
            f"{statistics.median(t) / torch_median:.2f}",
        ]
        for module, t in times.items()
    ]
    print(format_table(["statement", "median s", "min-max s", "x torch"], rows))
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, lightning_geo; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'lightning', 'botorch', 'gpytorch', 'matplotlib'}))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"\nheavy libraries loaded by `import lightning_geo`: {loaded}")


if __name__ == "__main__":
    main()
