"""Show a swarm's training state (template/inspect_dht.py; the ``subnet-inspect`` console script).

    python scripts/inspect_dht.py --initial_peers /ip4/127.0.0.1/tcp/8009/p2p/12D3Koo.. \\
        [--run_id fineweb-gpt2] [--target_batch_size 64] [--json] [--watch SECONDS] \\
        [--netuid 1 --localchain.path WORKDIR/chain.sqlite] [--store.dir WORKDIR/checkpoints] \\
        [--workdir WORKDIR] [--serve PORT]      # --serve: a live page on http://127.0.0.1:PORT/

``--help`` lists every flag; the module's docstring says what is shown and what is counted.
"""

from __future__ import annotations

import sys

from template.inspect_dht import main, parse_args, render

__all__ = ["main", "parse_args", "render"]

if __name__ == "__main__":
    sys.exit(main())
