"""The README's example output, regenerated: run the main job and write what it printed and what it cost.

    python analyses/readme_example.py            # revinterp run (default preset, seed 0), then update README.md

Runs ``revinterp run --out <temporary dir> --quiet`` in a subprocess with one torch thread (``OMP_NUM_THREADS=1``)
and measures its wall-clock time, CPU time and peak memory (``resource.getrusage`` of the child), with the machine's
load average before and after (other work on the machine slows the run; the summary says how busy it was). Writes
``analyses/results/readme_example/results.json`` and ``summary.md``, and replaces the README's example block (between
``<!-- readme-example -->`` and ``<!-- /readme-example -->``), and the same block of the documentation's home page
(``docs/index.md``), with the printed table and the measured cost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "analyses" / "results" / "readme_example"
START, END = "<!-- readme-example -->", "<!-- /readme-example -->"


def measure_main_job(run_dir: Path) -> dict:
    command = [sys.executable, "-m", "revinterp.cli", "run", "--out", str(run_dir), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"revinterp run failed (exit {result.returncode}):\n{result.stderr}")
    return {
        "command": "revinterp run", "threads": 1, "cpus": os.cpu_count(), "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_gb": usage.ru_maxrss / 1e6,
        "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0],
        "stdout": result.stdout.replace(str(run_dir), "runs/default-seed0"),
        "report_mb": (run_dir / "report.html").stat().st_size / 1e6,
    }


def readme_block(m: dict) -> str:
    return (f"{START}\n```\n{m['stdout'].rstrip()}\n```\n\n"
            f"(seed 0; measured by `python analyses/readme_example.py`: {m['wall_s']:.0f} s wall clock, "
            f"{m['cpu_s']:.0f} s CPU, {m['peak_rss_gb']:.1f} GB peak memory, one torch thread on a {m['cpus']}-core "
            f"CPU with load average {m['load_average_before']:.1f} before the run; the report is "
            f"{m['report_mb']:.1f} MB.)\n{END}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-readme", action="store_true",
                        help="write the results only, leave README.md and docs/index.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="revinterp-readme-") as tmp:
        measured = measure_main_job(Path(tmp) / "default-seed0")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(measured, indent=1) + "\n")
    (OUT / "summary.md").write_text("# The README's example output\n\nCommand: `python analyses/readme_example.py`"
                                    "\n\n" + readme_block(measured).replace(START, "").replace(END, "").strip()
                                    + "\n")
    if not args.no_readme:
        for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
            text = page.read_text()
            if START not in text or END not in text:
                raise SystemExit(f"{page}: no {START} ... {END} block to replace")
            page.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: readme_block(measured), text,
                                   flags=re.DOTALL))
    print(readme_block(measured))


if __name__ == "__main__":
    main()
