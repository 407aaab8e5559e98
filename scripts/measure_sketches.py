"""Measure gradient-sketch agreement: honest vs lazy, random and scaled claims; validator cost.

    .venv/bin/python scripts/measure_sketches.py --steps 50

Builds the tiny preset, cuts the demo corpus (template.data) into 8x128 batches and compares, at
initialisation and again after ``--steps`` AdamW steps on other batches:

* honest-fp32: miner's SketchRecorder (2 threads) vs validator's batch_gradient_sketch (1 thread)
* honest-bf16: the same miner under bf16 autocast vs the fp32 validator
* lazy-copy: every claim is the gradient of one other batch at the same weights
* lazy-mean: claim for batch k is the mean of the other batches' gradients
* random: a random vector of the right norm; scaled-x2 / scaled-x0.5: the honest claim scaled

For each it prints min / median / max of cosine and norm ratio for the per-batch ("batch") and
the pairwise ("difference") checks of template.proof.verify_sketches. Figures are in
docs/validator.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from template.config import ModelConfig
from template.data.batches import epoch_batches
from template.data.shards import demo_records
from template.data.tokenizer import load_tokenizer
from template.model import build_model
from template.proof import (
    SketchRecorder,
    batch_gradient_sketch,
    sketch_seed,
    verify_sketches,
)
from template.training import accumulate

CHECKED = 8  # batches per simulated miner epoch (pages_per_epoch=8 batches of 8x128)


def make_batches(count: int, *, seq_len: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    pages = [r["text"] for r in demo_records(max_pages=4000)]
    random.Random(seed).shuffle(pages)
    batches = epoch_batches(pages, load_tokenizer(offline=True), seq_len=seq_len,
                            batch_size=batch_size)
    if len(batches) < count:
        raise SystemExit(f"demo corpus gives {len(batches)} batches, need {count}")
    return batches[:count]


def miner_sketches(model, batches, *, seed, precision, threads) -> tuple[list, float]:
    torch.set_num_threads(threads)
    recorder = SketchRecorder(seed=seed)
    model.zero_grad(set_to_none=True)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else None
    out, start = [], time.perf_counter()
    for batch in batches:
        accumulate(model, batch, autocast=ctx() if ctx else None)
        out.append(recorder.record(model))
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return out, elapsed


def validator_sketches(model, batches, *, seed, threads) -> tuple[list, list[float]]:
    torch.set_num_threads(threads)
    out, times = [], []
    for batch in batches:
        start = time.perf_counter()
        out.append(batch_gradient_sketch(model, batch, seed=seed)[1])
        times.append(time.perf_counter() - start)
    return out, times


def summarise(name: str, claims: list, recomputed: list) -> None:
    result = verify_sketches(dict(enumerate(claims)), dict(enumerate(recomputed)))
    for kind in ("batch", "difference"):
        rows = [a for a in result if a.kind == kind]
        cos = sorted(a.cosine for a in rows)
        ratio = sorted(a.norm_ratio for a in rows)
        print(f"  {name:12s} {kind:10s} cosine min {cos[0]: .5f} med {statistics.median(cos): .5f}"
              f" max {cos[-1]: .5f} | norm ratio min {ratio[0]:.4f}"
              f" med {statistics.median(ratio):.4f} max {ratio[-1]:.4f}")


def measure(model, batches, spare, *, seed: int, label: str) -> None:
    print(f"== {label}")
    honest, _ = miner_sketches(model, batches, seed=seed, precision="fp32", threads=2)
    bf16, _ = miner_sketches(model, batches, seed=seed, precision="bf16", threads=2)
    mine, _ = validator_sketches(model, batches, seed=seed, threads=1)
    other, _ = validator_sketches(model, spare[:1], seed=seed, threads=2)
    gen = torch.Generator().manual_seed(seed % 2**31)
    vec = [torch.tensor(s) for s in mine]
    means = [torch.stack([v for j, v in enumerate(vec) if j != k]).mean(0) for k in range(len(vec))]
    summarise("honest-fp32", honest, mine)
    summarise("honest-bf16", bf16, mine)
    summarise("lazy-copy", [other[0]] * len(mine), mine)
    summarise("lazy-mean", [m.tolist() for m in means], mine)
    rnd = [(torch.randn(len(v), generator=gen, dtype=torch.float64) * v.norm() / len(v) ** 0.5)
           .tolist() for v in vec]
    summarise("random", rnd, mine)
    for keep in (7, 4):
        part, _ = miner_sketches(model, [b[:keep] for b in batches], seed=seed,
                                 precision="fp32", threads=2)
        summarise(f"partial-{keep}/8", part, mine)
    summarise("scaled-x2", [[2 * x for x in s] for s in honest], mine)
    summarise("scaled-x0.5", [[0.5 * x for x in s] for s in honest], mine)
    timing(model, batches[:3], seed=seed)


def timing(model, batches, *, seed: int) -> None:
    """Side by side at 2 threads: miner batch without / with sketch, validator check of a batch."""
    torch.set_num_threads(2)
    plain, recorded, checked = [], [], []
    recorder = SketchRecorder(seed=seed)
    for batch in batches:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        accumulate(model, batch)
        plain.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        recorder.reset()
        start = time.perf_counter()
        accumulate(model, batch)
        recorder.record(model)
        recorded.append(time.perf_counter() - start)
        start = time.perf_counter()
        batch_gradient_sketch(model, batch, seed=seed)
        checked.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    p, r, c = (statistics.median(x) for x in (plain, recorded, checked))
    print(f"  cost (median of {len(batches)}, 2 threads): miner batch {p:.2f} s, with sketch "
          f"{r:.2f} s (+{100 * (r / p - 1):.0f}%); validator check of one batch {c:.2f} s = "
          f"{c / (CHECKED * r):.3f} of a miner epoch of {CHECKED} batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-only", action="store_true",
                        help="only the side-by-side cost figures, over 5 batches")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    batches = make_batches(CHECKED + 1 + 16, seq_len=128, batch_size=8, seed=args.seed)
    checked, spare, train = batches[:CHECKED], batches[CHECKED:CHECKED + 1], batches[CHECKED + 1:]
    model = build_model(ModelConfig(preset="tiny"), seed=args.seed)
    seed = sketch_seed("measure", 0)
    if args.timing_only:
        timing(model, checked[:5], seed=seed)
        return
    measure(model, checked, spare, seed=seed, label="at initialisation")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.set_num_threads(2)
    start = time.perf_counter()
    for step in range(args.steps):
        model.zero_grad(set_to_none=True)
        loss = accumulate(model, train[step % len(train)])
        optimizer.step()
    model.zero_grad(set_to_none=True)
    print(f"(trained {args.steps} steps in {time.perf_counter() - start:.0f} s, "
          f"last loss {loss:.3f})")
    measure(model, checked, spare, seed=seed, label=f"after {args.steps} steps")


if __name__ == "__main__":
    main()
