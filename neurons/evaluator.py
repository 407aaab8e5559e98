"""Evaluator entry point: parse flags, build, score each new checkpoint on held-out pages, close.

    python neurons/evaluator.py --store.dir ~/.distributed_training/checkpoints \
        --data.dir ~/.distributed_training/shards --neuron.run_id fineweb-gpt2

Watches the checkpoint store and writes each canonical `epoch-N`'s `eval.json` (held-out loss,
perplexity, wins against `epoch-(N-1)`, `flagged`); it needs no wallet, chain or DHT and runs
beside the swarm on `--evaluator.threads` CPU threads (template/evaluator.py,
docs/local-devnet.md).
"""

from __future__ import annotations

import sys

from template.evaluator import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
