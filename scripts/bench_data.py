"""Data pipeline throughput vs what a GPT-2 124M training step consumes, on this CPU.

    python scripts/bench_data.py --repeats 5 --model-steps 3

Data side: the demo shards (built in a temp folder unless ``--shards DIR``) are opened, every
page is read by random access in the order ``assign_pages`` gives (the miner's access
pattern), tokenized and packed into ``[batch, seq_len]`` batches. Model side: the
``gpt2-124m`` preset does forward + backward + AdamW step on a ``batch x seq_len`` batch.
Both are medians over repeats, measured in one run; the ratio says how many times faster the
data layer produces tokens than one training process consumes them. Prints JSON, then a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from template.data import (  # noqa: E402
    assign_pages,
    ensure_demo_shards,
    epoch_batches,
    load_tokenizer,
    local_source,
)
from template.data.assignment import training_size  # noqa: E402


def bench_data(shards: Path, *, seq_len: int, batch_size: int, repeats: int) -> dict:
    tok = load_tokenizer()
    n = local_source(shards).num_pages
    order = assign_pages(run_id="bench", epoch=0, miner=0, pages_per_miner=training_size(n),
                         dataset_size=n)  # every page but the held-out slice
    rows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        source = local_source(shards)  # cold: footers validated, no row group cached
        t1 = time.perf_counter()
        texts = source.pages(order)
        t2 = time.perf_counter()
        batches = epoch_batches(texts, tok, seq_len=seq_len, batch_size=batch_size)
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, len(batches) * seq_len * batch_size,
                     sum(map(len, texts))))
    med = {k: statistics.median(r[i] for r in rows)
           for i, k in enumerate(("open_s", "read_s", "tokenize_pack_s"))}
    tokens, chars = rows[0][3], rows[0][4]
    total = med["open_s"] + med["read_s"] + med["tokenize_pack_s"]
    return {"pages": n, "chars": chars, "tokens": tokens, **med, "total_s": total,
            "pages_per_s_read": n / med["read_s"], "tokens_per_s": tokens / total}


def _model() -> torch.nn.Module:
    try:
        from template.config import ModelConfig
        from template.model import build_model
    except ImportError:  # template.model not there yet: the same shape straight from transformers
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(cfg).train()
    return build_model(ModelConfig(preset="gpt2-124m"), seed=0)


def bench_model(*, seq_len: int, batch_size: int, steps: int) -> dict:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 50257, (batch_size, seq_len), generator=gen)
    times = []
    for step in range(steps + 1):  # the first step (allocations, AdamW state) is not counted
        t0 = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"params": sum(p.numel() for p in model.parameters()), "step_s": step_s,
            "steps": steps, "tokens_per_s": batch_size * seq_len / step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=None, help="shard folder (default: demo)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="data pipeline repeats")
    parser.add_argument("--model-steps", type=int, default=3, help="timed training steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or Path(tmp)
        if args.shards is None:
            ensure_demo_shards(shards)
        data = bench_data(shards, seq_len=args.seq_len, batch_size=args.batch_size,
                          repeats=args.repeats)
    model = bench_model(seq_len=args.seq_len, batch_size=args.batch_size, steps=args.model_steps)
    result = {"torch_threads": torch.get_num_threads(), "seq_len": args.seq_len,
              "batch_size": args.batch_size, "data": data, "model_gpt2_124m": model,
              "ratio_data_over_model": data["tokens_per_s"] / model["tokens_per_s"]}
    print(json.dumps(result, indent=1))
    print("\n| stage | median | throughput |\n|---|---|---|")
    print(f"| open {data['pages']} pages' shards (footers) | {data['open_s']:.3f} s | |")
    print(f"| read all pages, assignment order | {data['read_s']:.3f} s | "
          f"{data['pages_per_s_read']:,.0f} pages/s |")
    print(f"| tokenize + pack {data['tokens']:,} tokens | {data['tokenize_pack_s']:.3f} s | |")
    print(f"| data pipeline total | {data['total_s']:.3f} s | "
          f"{data['tokens_per_s']:,.0f} tokens/s |")
    print(f"| gpt2-124m train step {args.batch_size}x{args.seq_len} | {model['step_s']:.2f} s | "
          f"{model['tokens_per_s']:,.0f} tokens/s |")
    print(f"| ratio data / model | | {result['ratio_data_over_model']:,.0f}x |")


if __name__ == "__main__":
    main()
