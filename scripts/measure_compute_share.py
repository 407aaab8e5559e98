"""Where the miners' time went in local-swarm runs: training vs waiting vs in the round.

    python scripts/local_swarm.py --miners 3 --validators 1 --epochs 3 --workdir W1
    python scripts/measure_compute_share.py W1 [W2 ...]

Reads each run's `miners/*/epochs.jsonl` (one line per miner-epoch, written by the miner:
`train_seconds` of local work, `wait_seconds` until its round was requested, `round_seconds`
of matchmaking + all-reduce) and prints one JSON line per run: the compute share (training
seconds over all three, summed over every miner-epoch) and the median of each phase. Red-team
miners (`miners/cheater*`) are left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from template.localnet import epoch_rows
from template.swarm_summary import miner_phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    args = parser.parse_args()
    for workdir in args.workdirs:
        miners = sorted(p for p in (workdir / "miners").iterdir()
                        if p.is_dir() and not p.name.startswith("cheater"))
        rows = [row for m in miners for row in epoch_rows(m)]
        print(json.dumps({"run": str(workdir), "miner_epochs": len(rows),
                          **miner_phases(rows)}))


if __name__ == "__main__":
    main()
