"""What one `harness bisect` costs: releases in range, environments built, wall time.

    python benchmarks/bisect_cost.py             # over a local index of 12 tiny releases (no network)
    python benchmarks/bisect_cost.py -- benchmarks/releases/bnb_cpu_adamw8bit.yaml \\
        --package bitsandbytes --from 0.45.5 --to 0.50.2   # any real bisect, through pip's own indexes

Either way the environments are built into a fresh cache (a temporary folder), so the count is what a
first bisect costs; the figures come from the command's own `bisect.md` headline.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from tests.releases import BROKEN_FROM, MATRIX, RELEASES, build_index

    with tempfile.TemporaryDirectory(prefix="bisect-cost-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "HARNESS_ENV_CACHE": str(work / "envs"), "PYTHONPATH": str(ROOT)}
        if argv:
            args = argv
            expected = None
        else:
            env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
            env["PIP_FIND_LINKS"] = str(build_index(work / "wheels"))
            (work / "matrix.yaml").write_text(MATRIX)
            args = [str(work / "matrix.yaml"), "--package", "tinyopt", "--from", RELEASES[0], "--to", RELEASES[-1]]
            expected = BROKEN_FROM
        out = work / "out"
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "harness", "bisect", *args, "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:], sep="\n")
            print(f"bisect exited {result.returncode}")
            return 1
        headline = (out / "bisect.md").read_text().splitlines()[2]
        built = int(re.search(r"(\d+) environments built", headline).group(1))  # type: ignore[union-attr]
        releases = int(re.search(r": (\d+) releases", headline).group(1))  # type: ignore[union-attr]
        firsts = re.findall(r"\*\*([^*]+)\*\*", (out / "bisect.md").read_text())
        print(f"command: python -m harness bisect {' '.join(args)}")
        print(f"releases in range:    {releases}")
        bound = 2 + math.ceil(math.log2(max(releases - 1, 1)))  # both ends, then a binary search of the gaps
        print(f"environments built:   {built} (worst case: 2 ends + ceil(log2({releases - 1} gaps)) = {bound})")
        print(f"wall time:            {wall:.1f} s")
        print(f"first new release:    {', '.join(firsts) or 'no cell changed'}")
        if expected is not None and firsts != [expected]:
            print(f"expected {expected}: the search is wrong")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:][1:] if sys.argv[1:2] == ["--"] else sys.argv[1:]))
