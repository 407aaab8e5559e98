"""Measure the validator: cost of one Train check vs a miner's epoch, and the honest spread of
post-step fingerprints (what ``--validator.fingerprint_tolerance`` must clear).

    .venv/bin/python scripts/measure_validator.py [--repeats 3] [--pages 8] [--peers 3]

Part 1 (tiny preset, default data shape 8 x 128, ``--pages`` pages per epoch, demo corpus): the
miner's
epoch (tokenize its pages, forward/backward + sketch of every batch) against the validator's
``verify_train`` of that epoch's claim with ``--validator.check_batches`` 2 (tokenize, recompute
2 batches, compare), side by side, median of ``--repeats``.

Part 2: ``--peers`` honest miners on loopback, each with its own copy of theta_0 and its own
batches, run one real ``SwarmAverager`` round per compression and apply the averaged gradient
with the project's AdamW step; each peer runs torch with a different thread count (1 or 2).
Reports the largest pairwise fingerprint distance, the largest distance from the median, and
for scale the distance caused by one wrong step (lr x2). Figures go to docs/validator.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bittensor  # noqa: F401  (import before hivemind)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivemind_utils.averaging import SwarmAverager  # noqa: E402
from hivemind_utils.dht import start_dht, visible_maddrs  # noqa: E402
from template.config import AveragingConfig, DHTConfig, ModelConfig, OptimConfig  # noqa: E402
from template.data.batches import epoch_batches  # noqa: E402
from template.data.shards import demo_records  # noqa: E402
from template.data.tokenizer import load_tokenizer  # noqa: E402
from template.model import build_model, fingerprint, fingerprint_distance  # noqa: E402
from template.proof import SketchRecorder, sketch_seed  # noqa: E402
from template.training import (  # noqa: E402
    accumulate,
    apply_gradients,
    build_optimizer,
    learning_rate,
    mean_gradient,
)
from template.validator.allreduce_round import median_fingerprint  # noqa: E402
from template.validator.verify import TrainClaim, VerifyThresholds, verify_train  # noqa: E402

SEQ, BATCH = 128, 8
PAGES = 8  # per miner in the spread measurement (--data.pages_per_epoch default)


def miner_epoch(model, texts, tokenizer, seed, pages):
    started = time.perf_counter()
    batches = epoch_batches(texts, tokenizer, seq_len=SEQ, batch_size=BATCH)
    recorder, sketches, losses = SketchRecorder(seed=seed), [], []
    model.zero_grad(set_to_none=True)
    for batch in batches:
        losses.append(accumulate(model, batch))
        sketches.append(tuple(recorder.record(model)))
    model.zero_grad(set_to_none=True)
    claim = TrainClaim(epoch=0, pages=tuple(range(pages)), batches=tuple(range(len(batches))),
                       samples=len(batches) * BATCH, sketches=tuple(sketches),
                       loss=sum(losses) / len(losses), sketch_seed=seed, peer_id="x",
                       model_fingerprint=tuple(fingerprint(model)))
    return claim, time.perf_counter() - started


def cost(repeats: int, per_epoch: int) -> None:
    torch.set_num_threads(2)
    tokenizer = load_tokenizer(offline=True)
    pages = [r["text"] for r in demo_records(max_pages=per_epoch * repeats)]
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    seed = sketch_seed("measure", 0)
    miner, check, batches = [], [], []
    for r in range(repeats):
        texts = pages[r * per_epoch:(r + 1) * per_epoch]
        claim, seconds = miner_epoch(model, texts, tokenizer, seed, per_epoch)
        miner.append(seconds)
        batches.append(len(claim.batches))
        verdict = verify_train(claim, uid=0, epoch=0, expected_pages=claim.pages, texts=texts,
                               tokenizer=tokenizer, model=model, seed=seed, seq_len=SEQ,
                               batch_size=BATCH, rng=random.Random(r),
                               thresholds=VerifyThresholds(check_batches=2))
        assert verdict.ok and verdict.gradient == 1.0, verdict
        check.append(verdict.seconds)
    m, c = statistics.median(miner), statistics.median(check)
    print(f"cost: miner epoch {m:.2f} s ({statistics.median(batches):.0f} batches of "
          f"{BATCH}x{SEQ}), validator check {c:.2f} s = {c / m:.3f} of the epoch "
          f"(median of {repeats})")


def spread(peers: int) -> None:
    tokenizer = load_tokenizer(offline=True)
    texts = [r["text"] for r in demo_records(max_pages=PAGES * peers)]
    data = [epoch_batches(texts[i * PAGES:(i + 1) * PAGES], tokenizer, seq_len=SEQ,
                          batch_size=BATCH)[:2] for i in range(peers)]
    optim = OptimConfig()
    lr = learning_rate(0, optim)
    boot = start_dht(DHTConfig(), run_id="spread")
    dhts = [boot] + [start_dht(DHTConfig(), run_id="spread", initial_peers=visible_maddrs(boot))
                     for _ in range(peers - 1)]
    try:
        for compression in ("none", "fp16", "8bit"):
            cfg = AveragingConfig(matchmaking_time=3.0, request_timeout=1.0,
                                  compression=compression, allreduce_timeout=120.0)
            models = [build_model(ModelConfig(preset="tiny"), seed=0) for _ in range(peers)]
            for i, (model, batches) in enumerate(zip(models, data, strict=True)):
                torch.set_num_threads(1 + i % 2)
                for batch in batches:
                    accumulate(model, batch)
                mean_gradient(model, len(batches))
            averagers = [SwarmAverager(dht=d, run_id=f"spread-{compression}", cfg=cfg,
                                       params=m.parameters()) for d, m in zip(dhts, models,
                                                                              strict=True)]
            for averager, model in zip(averagers, models, strict=True):
                averager.load_gradients(model.parameters())
            with ThreadPoolExecutor(peers) as pool:
                results = list(pool.map(lambda a: a.average(weight=16, timeout=30), averagers))
            assert all(r.complete for r in results), [r.error for r in results]
            fps, wrong = [], None
            for i, (averager, model) in enumerate(zip(averagers, models, strict=True)):
                torch.set_num_threads(1 + i % 2)
                averager.write_gradients(model.parameters())
                opt = build_optimizer(model, optim)
                if i == 0:
                    twin = build_model(ModelConfig(preset="tiny"), seed=0)
                    for p, q in zip(twin.parameters(), model.parameters(), strict=True):
                        p.grad = q.grad.clone()
                    apply_gradients(twin, build_optimizer(twin, optim), lr=2 * lr,
                                    max_grad_norm=optim.max_grad_norm)
                    wrong = fingerprint(twin)
                apply_gradients(model, opt, lr=lr, max_grad_norm=optim.max_grad_norm)
                fps.append(fingerprint(model))
            pair = max(fingerprint_distance(a, b) for a in fps for b in fps)
            median = median_fingerprint(fps)
            to_median = max(fingerprint_distance(f, median) for f in fps)
            print(f"spread {compression:5s}: max pairwise {pair:.3g}, max to median "
                  f"{to_median:.3g}; wrong step (lr x2) {fingerprint_distance(wrong, fps[0]):.3g}")
            for averager in averagers:
                averager.shutdown()
    finally:
        for node in reversed(dhts):
            node.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pages", type=int, default=PAGES)
    parser.add_argument("--peers", type=int, default=3, help="0 skips the spread measurement")
    args = parser.parse_args()
    cost(args.repeats, args.pages)
    if args.peers:
        spread(args.peers)


if __name__ == "__main__":
    main()
