"""Drift between miners per epoch, for each averaging compression, from real local swarms.

    python scripts/measure_drift.py --epochs 5 --compressions none,fp16,8bit

For each compression, runs `scripts/local_swarm.py` (3 miners, no validator) and reads its
summary: per epoch, the largest fingerprint distance between two miners and the largest
distance from a miner to the canonical checkpoint, next to the consensus tolerance that the
validator applies for that compression (`template.consensus.consensus_tolerance`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from template.model import fingerprint_distance

REPO = Path(__file__).resolve().parents[1]


def run(compression: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, float]]:
    summary = workdir / "summary.json"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "local_swarm.py"), "--validators", "0",
         "--miners", str(args.miners), "--epochs", str(args.epochs), "--compression", compression,
         "--workdir", str(workdir), "--summary", str(summary), "--demo_pages", "400",
         "--seq_len", "64", "--batch_size", "4", "--pages_per_epoch", "4"],
        check=True, capture_output=True, text=True)
    rows = []
    for entry in json.loads(summary.read_text())["epochs"]:
        fps = list(entry["fingerprints"].values())
        pairwise = max((fingerprint_distance(a, b) for a, b in itertools.combinations(fps, 2)),
                       default=0.0)
        canonical = max(fingerprint_distance(f, entry["canonical_fingerprint"]) for f in fps)
        rows.append({"compression": compression, "epoch": entry["epoch"],
                     "max_pairwise": pairwise, "max_to_canonical": canonical,
                     "tolerance": entry["fingerprint_tolerance"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--miners", type=int, default=3)
    p.add_argument("--compressions", default="none,fp16,8bit")
    args = p.parse_args()
    print(f"{'compression':>11} {'epoch':>5} {'max pairwise':>12} {'max to canon':>12} "
          f"{'tolerance':>9}")
    for compression in args.compressions.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            for row in run(compression, args, Path(tmp)):
                print(f"{row['compression']:>11} {row['epoch']:>5} {row['max_pairwise']:>12.3g} "
                      f"{row['max_to_canonical']:>12.3g} {row['tolerance']:>9.3g}", flush=True)


if __name__ == "__main__":
    main()
