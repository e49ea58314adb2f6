"""Wall time of `lead-train --help` and of a config error, beside `import hydra` and `import lightning.pytorch`.

Each command runs ``--repeats`` times in alternation (so a burst of load on a shared machine hits all
of them alike) in an empty temporary directory; the table gives median and range in seconds.
``--baseline-src DIR`` adds the same two `lead-train` commands run from another checkout of the
package (e.g. ``git worktree add /tmp/before <commit>``), for a before/after comparison.

Run: ``python benchmarks/bench_cli.py --repeats 5 [--baseline-src /tmp/before]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG_ERROR = "selection.budgt=0.1"


def _main_from(src: str, *args: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {src!r}); sys.argv = ['lead-train', *{list(args)!r}];"
    return [sys.executable, "-c", code + " from lead_lightning.train import main; main()"]


def commands(baseline_src: str | None) -> dict[str, tuple[list[str], int]]:
    """Label -> (command, expected exit code)."""
    script = shutil.which("lead-train")
    lead_train = [script] if script else [sys.executable, "-m", "lead_lightning.train"]
    cmds = {
        "lead-train --help": ([*lead_train, "--help"], 0),
        f"lead-train {CONFIG_ERROR} (config error)": ([*lead_train, CONFIG_ERROR], 1),
        'python -c "import hydra"': ([sys.executable, "-c", "import hydra"], 0),
        'python -c "import lightning.pytorch"': ([sys.executable, "-c", "import lightning.pytorch"], 0),
    }
    if baseline_src:
        cmds["baseline: lead-train --help"] = (_main_from(baseline_src, "--help"), 0)
        cmds[f"baseline: lead-train {CONFIG_ERROR}"] = (_main_from(baseline_src, CONFIG_ERROR), 1)
    return cmds


def measure(cmds: dict[str, tuple[list[str], int]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {label: [] for label in cmds}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(repeats):
            for label, (cmd, code) in cmds.items():
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
                times[label].append(time.perf_counter() - t0)
                if proc.returncode != code:
                    raise RuntimeError(
                        f"{label}: exit {proc.returncode}, expected {code}\n{proc.stderr[-2000:]}"
                    )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-src", default=None, help="another checkout of the repository")
    args = parser.parse_args()
    times = measure(commands(args.baseline_src), args.repeats)
    print(f"| command | median s | range s (n={args.repeats}) |\n|---|---:|---:|")
    for label, ts in times.items():
        print(f"| `{label}` | {statistics.median(ts):.2f} | {min(ts):.2f} - {max(ts):.2f} |")


if __name__ == "__main__":
    main()
