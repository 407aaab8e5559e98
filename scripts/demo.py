"""`make demo`: train the tiny model on the demo shards, push a checkpoint, resume, continue.

    python scripts/demo.py                          # ./runs/demo, 200 + 100 steps, a few minutes
    python scripts/demo.py --workdir /tmp/demo --steps 50 --more_steps 20
    python scripts/demo.py --data.batch_size 8      # any config flag overrides the demo's

Phase 1 builds the demo shards (no download) under ``<workdir>/shards`` and trains ``--steps``
steps from the seeded weights, pushing ``epoch-N`` checkpoints to ``<workdir>/checkpoints``.
Phase 2 builds everything again from scratch (as a restarted process would), resumes from the
latest checkpoint and trains ``--more_steps`` more. Logs and the offline wandb run go to
``<workdir>/logs``. ``<workdir>/checkpoints`` is emptied first so every demo starts at step 0.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from template.config import Config, parse_config  # noqa: E402
from template.data import load_tokenizer  # noqa: E402
from template.local_trainer import LocalTrainer, StepStats, prepare_local_shards, run  # noqa: E402
from template.telemetry import Telemetry, setup_logging  # noqa: E402


def demo_config(workdir: Path, total_steps: int, extra: list[str]) -> Config:
    """The demo's flags, then the caller's (argparse keeps the last value of a flag)."""
    defaults = [
        "--model.preset", "tiny", "--neuron.device", "auto",
        "--data.dir", str(workdir / "shards"), "--data.seq_len", "128",
        "--data.batch_size", "4",
        "--store.dir", str(workdir / "checkpoints"), "--logging.dir", str(workdir / "logs"),
        "--optim.lr", "3e-3", "--optim.min_lr", "3e-4", "--optim.warmup_epochs", "20",
        "--optim.total_epochs", str(total_steps), "--wandb.mode", "offline",
    ]
    return parse_config([*defaults, *extra], description="demo")


def mean_loss(history: list[StepStats]) -> float:
    return sum(s.loss for s in history) / max(1, len(history))


def phase(cfg: Config, *, steps: int, resume: bool, name: str) -> list[StepStats]:
    trainer = LocalTrainer(cfg, tokenizer=load_tokenizer())
    if resume:
        epoch = trainer.resume()
        print(f"[{name}] resumed from epoch-{epoch}: step {trainer.step}, "
              f"batcher at {trainer.batcher.state_dict()}")
    telemetry = Telemetry(cfg, role="local", name=f"demo-{name}")
    try:
        history = run(trainer, steps=steps, log_every=10, push_every=100, telemetry=telemetry)
    finally:
        telemetry.close()
    print(f"[{name}] steps {history[0].step}..{history[-1].step}: mean loss of the first 10 "
          f"{mean_loss(history[:10]):.3f}, of the last 10 {mean_loss(history[-10:]):.3f}; "
          f"store has {', '.join(trainer.store.tags())}")
    return history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="./runs/demo", help="folder for everything")
    parser.add_argument("--steps", type=int, default=200, help="steps before the checkpoint")
    parser.add_argument("--more_steps", type=int, default=100, help="steps after resuming")
    args, extra = parser.parse_known_args(argv)
    if args.steps < 1 or args.more_steps < 1:
        parser.error("--steps and --more_steps must be >= 1")
    workdir = Path(args.workdir).expanduser().resolve()
    cfg = demo_config(workdir, args.steps + args.more_steps, extra)
    setup_logging(cfg.logging, name="demo")
    import transformers  # its per-push "Writing model shards" bar would break ours

    transformers.utils.logging.disable_progress_bar()
    prepare_local_shards(cfg.data)  # the demo set, unless --data.dir already holds shards
    shutil.rmtree(Path(cfg.store.dir), ignore_errors=True)  # every demo starts at step 0
    before = phase(cfg, steps=args.steps, resume=False, name="train")
    after = phase(cfg, steps=args.steps + args.more_steps, resume=True, name="resume")
    start, end = mean_loss(before[:10]), mean_loss(after[-10:])
    print(f"loss: {start:.3f} at the start -> {end:.3f} at the end "
          f"({'fell' if end < start else 'DID NOT FALL'}); checkpoints in {cfg.store.dir}, "
          f"wandb offline run in {cfg.logging.dir}/wandb")
    return 0 if end < start else 1


if __name__ == "__main__":
    sys.exit(main())
