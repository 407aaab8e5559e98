"""Train one model in one process on the local shards; push checkpoints; resume from them.

    python scripts/train_local.py --steps 300 --push_every 100             # tiny, demo shards
    python scripts/train_local.py --steps 400                               # resumes at 300
    python scripts/train_local.py --model.preset gpt2-124m --neuron.device cuda --grad_accum 4

Every config flag (``--section.field``, see ``template/config.py``) applies; ``--steps`` is the
step count to reach (resuming from step 300 with ``--steps 400`` trains 100 more). The demo
shards are built in ``--data.dir`` when it holds no shards. The loop is
``template.local_trainer.run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from template.config import ConfigError, build_parser, config_from_namespace  # noqa: E402
from template.local_trainer import LocalTrainer, prepare_local_shards, run  # noqa: E402
from template.telemetry import Telemetry, setup_logging  # noqa: E402


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, object]:
    parser = build_parser(__doc__.split("\n\n")[0])
    group = parser.add_argument_group("local run")
    group.add_argument("--steps", type=int, default=300, help="step count to reach")
    group.add_argument("--grad_accum", type=int, default=1, help="batches per optimizer step")
    group.add_argument("--log_every", type=int, default=10, help="steps between wandb logs")
    group.add_argument("--push_every", type=int, default=100,
                       help="steps between checkpoint pushes (0 = only at the end)")
    group.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="continue from the store's latest epoch-N checkpoint")
    group.add_argument("--max_pages", type=int, default=None,
                       help="walk only the first N pages of the shards (default: all)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="show the tqdm progress bar")
    ns = parser.parse_args(argv)
    try:
        return ns, config_from_namespace(ns)
    except ConfigError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse(argv)
    log = setup_logging(cfg.logging, name="train_local")
    import transformers  # its per-push "Writing model shards" bar would break ours

    transformers.utils.logging.disable_progress_bar()
    prepare_local_shards(cfg.data)
    trainer = LocalTrainer(cfg, grad_accum=args.grad_accum, max_pages=args.max_pages)
    start = trainer.resume() if args.resume else None
    log.info("starting at step %d (%s) on %s/%s", trainer.step,
             f"resumed epoch-{start}" if start is not None else "fresh weights",
             trainer.device, trainer.precision)
    telemetry = Telemetry(cfg, role="local", name=f"local-{cfg.model.preset}")
    try:
        history = run(trainer, steps=args.steps, log_every=args.log_every,
                      push_every=args.push_every, telemetry=telemetry, progress=args.progress)
    finally:
        telemetry.close()
    if history:
        log.info("steps %d..%d: loss %.3f -> %.3f", history[0].step, history[-1].step,
                 history[0].loss, history[-1].loss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
