"""Dataset work at 100k, 1M and 10M rows: `dataset import`, `snapshot create` and `dataset show`, each as the real
command in its own process, timed, with the peak memory of that process (and any it starts).

    .venv/bin/python bench/dataset_scale.py [--rows 100000 1000000 10000000] [--dir /tmp/headsmith-scale]

The CSVs are synthetic, as in issue 16: 12 words a row from a 2,000-word vocabulary, two label columns (spam: 2
classes, topic: 6), an id. Also timed in process: the queries behind `dataset show` (counts, first page, failed
images). Targets (issue 16): time grows no faster than the rows; peak memory under 1 GB at every size; the show
queries under 0.3 s and the command under 2 s at 1M rows. Needs about 2.5 GB of disk per million rows."""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

HEADSMITH = str(Path(sys.executable).with_name("headsmith"))
TOPICS = ["news", "sport", "music", "games", "food", "travel"]


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(0)
    vocabulary = [f"w{i}{chr(97 + i % 26)}" for i in range(2000)]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "text", "spam", "topic"])
        for i in range(rows):
            out.writerow([f"m{i}", " ".join(rng.choices(vocabulary, k=12)), rng.choice(["yes", "no"]),
                          rng.choice(TOPICS)])


def run(args: list[str], env: dict) -> tuple[float, float, str]:
    """Run `headsmith ARGS`: (seconds, peak memory in GB, its output). A fresh wrapper process runs it, so the
    wrapper's RUSAGE_CHILDREN ru_maxrss is the command's own peak (the largest of it and what it waited for)."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "start = time.perf_counter()\n"
               "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "seconds = time.perf_counter() - start\n"
               "sys.stdout.write(done.stdout)\n"
               "sys.stderr.write(done.stderr)\n"
               "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20\n"
               "print(f'@@ {seconds} {peak}', file=sys.stderr)\n"
               "sys.exit(done.returncode)\n")
    done = subprocess.run([sys.executable, "-c", wrapper, HEADSMITH, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"headsmith {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    seconds, peak = map(float, done.stderr.rsplit("@@ ", 1)[1].split())
    return seconds, peak, done.stdout


def show_queries(home: Path) -> float:
    """Seconds for what `dataset show` asks the catalog: counts, the first page of rows (and their count), the failed
    images."""
    env = {**os.environ, "HEADSMITH_HOME": str(home)}
    code = ("import time\n"
            "from headsmith.data.dataset import failed_images, rows_page, summary\n"
            "from headsmith.workspace import Workspace\n"
            "w = Workspace(); summary(w, 'synthetic')\n"  # a first call opens and migrates the catalog
            "start = time.perf_counter()\n"
            "summary(w, 'synthetic'); rows_page(w, 'synthetic', 10); failed_images(w, 'synthetic', 10)\n"
            "print(time.perf_counter() - start)\n")
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--dir", default="/tmp/headsmith-scale")
    args = parser.parse_args()
    base = Path(args.dir)
    print("| rows | CSV | import | peak | snapshot create | peak | dataset show | peak | show queries |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        folder = base / str(rows)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        data = folder / "synthetic.csv"
        write_csv(data, rows)
        env = {**os.environ, "HEADSMITH_HOME": str(folder / "workspace"), "HF_HUB_OFFLINE": "1"}
        imported = run(["dataset", "import", str(data), "--name", "synthetic", "--yes"], env)
        made = run(["snapshot", "create", "synthetic", "--name", "synthetic", "--input", "text",
                    "--label", "spam=spam", "--label", "topic=topic"], env)
        shown = run(["dataset", "show", "synthetic"], env)
        assert f"{rows} rows" in shown[2], shown[2]
        query = show_queries(folder / "workspace")
        print(f"| {rows:,} | {data.stat().st_size / 1e6:.0f} MB | {imported[0]:.1f} s | {imported[1]:.2f} GB "
              f"| {made[0]:.1f} s | {made[1]:.2f} GB | {shown[0]:.2f} s | {shown[1]:.2f} GB | {query:.3f} s |",
              flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
