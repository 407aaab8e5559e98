"""Miner step throughput (tokens/s, MFU, peak memory) per preset, and the validator's cost.

    python scripts/bench_miner.py --presets tiny,gpt2-124m --batch_size 1 --seq_len 128 \\
        --steps 3 --warmup 1 --device cpu                       # CPU figures, a few minutes
    python scripts/bench_miner.py --presets gpt2-124m,gpt2-1b --batch_size 8 --seq_len 1024 \\
        --device cuda --precision bf16 --accum 4                # on a GPU

Miner step = forward + backward of one ``batch_size x seq_len`` micro-batch under the
precision's autocast (``template.training.accumulate``), plus one clipped AdamW step
(``apply_gradients``) every ``--accum`` micro-batches; timed separately, medians over
``--steps`` micro-batches after ``--warmup``. The per-batch gradient sketch the miner records
(``SketchRecorder.record``) is reported on its own.

MFU = achieved FLOP/s / peak FLOP/s, with FLOPs per token = 6 N + 12 n_layer n_embd seq_len
(PaLM, appendix B: weights' matmuls forward and backward, plus attention scores). N counts every
parameter once (the tied LM head is a matmul, so it counts) except the position embeddings (a
lookup, no matmul), as nanoGPT's ``estimate_mfu`` does. Peak FLOP/s: ``--peak_tflops`` or the
table below for known GPUs; on CPU, MFU is n/a unless ``--peak_tflops`` is given.

Validator cost: re-computing ``--check_batches`` batches of one Train response with
``template.proof.batch_gradient_sketch`` (forward + backward + sketch each), divided by the
miner's epoch (``--epoch_batches`` micro-batches with sketches + the AdamW steps).
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; peak RSS of this process on CPU
(reset per preset through ``/proc/self/clear_refs`` where Linux allows it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from template.config import ModelConfig, OptimConfig, ValidatorConfig  # noqa: E402
from template.device import autocast, resolve_device, resolve_precision  # noqa: E402
from template.model import PRESETS, build_model, count_parameters  # noqa: E402
from template.proof import SketchRecorder, batch_gradient_sketch, sketch_seed  # noqa: E402
from template.training import accumulate, apply_gradients, build_optimizer  # noqa: E402

# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, SXM parts. fp32 = plain fp32
# (torch does not use TF32 for matmuls unless allow_tf32 is set).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
}


def flops_per_token(model: torch.nn.Module, preset: str, seq_len: int) -> float:
    shape = PRESETS[preset]
    n = count_parameters(model) - model.transformer.wpe.weight.numel()
    return 6.0 * n + 12.0 * shape.n_layer * shape.n_embd * seq_len


def peak_flops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table[precision] * 1e12
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # "5" resets the peak RSS (VmHWM) of this process (Linux >= 4.0); where that is refused the
    # figure is the process-wide peak so far (run one preset per process then).
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass  # fall back to getrusage below
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def bench_preset(preset: str, args: argparse.Namespace, device: torch.device,
                 precision: str) -> dict:
    reset_peak_memory(device)
    model = build_model(ModelConfig(preset=preset)).to(device)
    optimizer = build_optimizer(model, OptimConfig())
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len),
                             generator=gen).to(device) for _ in range(4)]
    recorder = SketchRecorder(seed=sketch_seed("bench", 0))

    def check(batch: torch.Tensor) -> None:  # the validator's recomputation of one batch
        batch_gradient_sketch(model, batch, seed=sketch_seed("bench", 0), precision=precision,
                              device=device)

    def step() -> None:
        apply_gradients(model, optimizer, lr=1e-4, max_grad_norm=1.0)

    fb, opt, sketch, verify = [], [], [], []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        t_fb = timed(lambda b=batch: accumulate(model, b, autocast=autocast(device, precision)),
                     device)
        t_sk = timed(lambda: recorder.record(model), device)
        t_opt = t_check = None
        if (i + 1) % args.accum == 0:  # step, then (grads cleared) one validator check
            t_opt = timed(step, device)
            recorder.reset()
            t_check = timed(lambda b=batch: check(b), device)
        if i >= args.warmup:  # interleaved, so machine load hits miner and validator alike
            fb.append(t_fb)
            sketch.append(t_sk)
            opt.extend([t_opt] if t_opt is not None else [])
            verify.extend([t_check] if t_check is not None else [])
    if not opt:  # fewer measured batches than --accum: time one step and one check now
        opt.append(timed(step, device))
        verify.append(timed(lambda: check(batches[0]), device))
    return summarize(preset, model, args, device, precision,
                     fb=statistics.median(fb), opt=statistics.median(opt),
                     sketch=statistics.median(sketch), verify=statistics.median(verify))


def summarize(preset: str, model: torch.nn.Module, args: argparse.Namespace,
              device: torch.device, precision: str, *, fb: float, opt: float, sketch: float,
              verify: float) -> dict:
    tokens = args.batch_size * args.seq_len
    step = fb + opt / args.accum  # seconds per micro-batch, optimizer amortised
    tok_s = tokens / step
    peak = peak_flops(device, precision, args.peak_tflops)
    fpt = flops_per_token(model, preset, args.seq_len)
    epoch = args.epoch_batches * (fb + sketch) + opt * -(-args.epoch_batches // args.accum)
    return {
        "preset": preset, "params": count_parameters(model), "device": str(device),
        "precision": precision, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "accum": args.accum, "fwd_bwd_s": fb, "adamw_s": opt, "sketch_s": sketch,
        "tokens_per_s": tok_s, "flops_per_token": fpt, "achieved_tflops": tok_s * fpt / 1e12,
        "mfu": None if peak is None else tok_s * fpt / peak,
        "peak_mem_gib": peak_memory_gib(device),
        "verify_batch_s": verify, "verify_response_s": args.check_batches * verify,
        "miner_epoch_s": epoch, "verify_over_epoch": args.check_batches * verify / epoch,
    }


# ------------------------------------------------------------------ memory budget (estimate)

GIB = 2**30
CUDA_CONTEXT_GIB = 0.6  # CUDA context + cuBLAS workspace, typical, not measured here
FRAGMENTATION = 0.9  # share of the card the caching allocator can really hand out (estimate)


def saved_activation_bytes(preset: str, *, n_layer: int, seq_len: int, precision: str) -> int:
    """Bytes autograd saves for backward in one forward of ``1 x seq_len`` tokens.

    Measured, not modelled: a ``n_layer``-deep copy of the preset runs on the CPU under the
    precision's autocast and ``saved_tensors_hooks`` adds up every saved storage once, except
    the fp32 parameters themselves (they are in the static budget). bf16 autocast's cached
    bf16 copies of the weights ARE counted: they stay alive until backward has used them.
    """
    from transformers import GPT2LMHeadModel

    from template.model import gpt2_config

    config = gpt2_config(preset)
    config.n_layer = n_layer
    config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(config).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, (1, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(
            torch.device("cpu"), precision):
        model(input_ids=ids, labels=ids)
    return sum(saved.values())


def memory_budget(preset: str, *, batch_size: int, seq_len: int, precision: str) -> dict:
    """GPU memory of one miner at ``batch_size x seq_len`` (estimate) and its host buffer.

    static = fp32 weights + fp32 grads + AdamW's two fp32 moments = 16 bytes/parameter;
    saved activations are measured per token at this ``seq_len`` (1- and 2-layer copies give
    the per-layer and the embedding/head parts) and scaled by depth and batch; the backward's
    largest transient is taken as the fp32 logits gradient plus its copy (2 x 4 x vocab bytes
    per token). The averager's buffer is host RAM: one fp32 copy of every gradient.
    """
    from transformers import GPT2LMHeadModel

    from template.model import gpt2_config

    with torch.device("meta"):
        params = count_parameters(GPT2LMHeadModel(gpt2_config(preset)))
    one = saved_activation_bytes(preset, n_layer=1, seq_len=seq_len, precision=precision)
    two = saved_activation_bytes(preset, n_layer=2, seq_len=seq_len, precision=precision)
    per_layer, head = two - one, 2 * one - two
    n_layer, vocab = PRESETS[preset].n_layer, gpt2_config(preset).vocab_size
    activations = batch_size * (head + n_layer * per_layer)
    if precision == "bf16":  # the bf16 weight copies are per model, not per sequence
        copies = 2 * params
        activations -= (batch_size - 1) * copies
    transient = 2 * 4 * vocab * batch_size * seq_len
    static = 16 * params
    return {"preset": preset, "params": params, "batch_size": batch_size, "seq_len": seq_len,
            "precision": precision, "weights_gib": 4 * params / GIB,
            "grads_gib": 4 * params / GIB, "adamw_gib": 8 * params / GIB,
            "activations_gib": activations / GIB, "transient_gib": transient / GIB,
            "total_gib": (static + activations + transient) / GIB,
            "per_sequence_gib": (head + n_layer * per_layer
                                 - (2 * params if precision == "bf16" else 0)) / GIB,
            "host_averager_gib": 4 * params / GIB}


def fits(budget: dict, card_gib: float) -> int:
    """Largest micro-batch (sequences) whose estimate fits ``card_gib`` (0 = none)."""
    usable = card_gib * FRAGMENTATION - CUDA_CONTEXT_GIB
    per_seq = budget["per_sequence_gib"] + budget["transient_gib"] / budget["batch_size"]
    fixed = budget["total_gib"] - budget["batch_size"] * per_seq  # static + bf16 weight copies
    return max(0, int((usable - fixed) // per_seq))


def markdown(rows: list[dict]) -> str:
    head = ("| preset | device/precision | B x T, accum | fwd+bwd s | AdamW s | tokens/s | "
            "TFLOP/s | MFU | peak mem GiB | sketch s/batch | verify s/batch | "
            "verify / miner epoch |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['preset']} | {r['device']}/{r['precision']} | {r['batch_size']} x "
            f"{r['seq_len']}, {r['accum']} | {r['fwd_bwd_s']:.3f} | {r['adamw_s']:.3f} | "
            f"{r['tokens_per_s']:,.0f} | {r['achieved_tflops']:.4f} | {mfu} | "
            f"{r['peak_mem_gib']:.2f} | {r['sketch_s']:.3f} | {r['verify_batch_s']:.3f} | "
            f"{100 * r['verify_over_epoch']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,gpt2-124m", help="comma-separated presets")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per AdamW step")
    parser.add_argument("--steps", type=int, default=5, help="measured micro-batches")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured micro-batches first")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="peak FLOP/s of the device in TFLOP/s (default: table for GPUs)")
    parser.add_argument("--check_batches", type=int, default=ValidatorConfig().check_batches,
                        help="batches a validator recomputes per Train response")
    parser.add_argument("--epoch_batches", type=int, default=8,
                        help="micro-batches a miner trains per epoch (for the cost ratio)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = keep)")
    parser.add_argument("--memory_budget", action="store_true",
                        help="print the estimated GPU memory budget instead of timing")
    parser.add_argument("--card_gib", type=float, default=16.0,
                        help="with --memory_budget: card size for the largest micro-batch")
    args = parser.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or args.accum < 1 or args.steps < 1 or args.warmup < 0:
        parser.error(f"unknown presets {unknown} (use {', '.join(PRESETS)}), or --accum/--steps"
                     " < 1 or --warmup < 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_budget:
        precision = "bf16" if args.precision in ("auto", "bf16") else "fp32"
        for preset in presets:
            budget = memory_budget(preset, batch_size=args.batch_size, seq_len=args.seq_len,
                                   precision=precision)
            budget["max_batch_on_card"] = fits(budget, args.card_gib)
            budget["card_gib"] = args.card_gib
            print(json.dumps(budget), flush=True)
        return 0
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    rows = []
    for preset in presets:
        row = bench_preset(preset, args, device, precision)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
