"""Single-process training: the loss falls, a pushed run resumes exactly, wandb writes offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from template.config import (
    Config,
    DataConfig,
    LoggingConfig,
    NeuronConfig,
    OptimConfig,
    StoreConfig,
    WandbConfig,
)
from template.data import ensure_demo_shards, load_tokenizer, num_batches
from template.local_trainer import LocalTrainer, LoopingBatcher, ResumeError, run
from template.model import parameter_hash
from template.telemetry import Telemetry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    ensure_demo_shards(folder, max_pages=40)
    return folder


def _cfg(shards: Path, tmp: Path, *, lr: float = 1e-3, wandb: str = "disabled") -> Config:
    return Config(
        data=DataConfig(dir=str(shards), seq_len=64, batch_size=2),
        store=StoreConfig(dir=str(tmp / "store")),
        logging=LoggingConfig(dir=str(tmp / "logs")),
        optim=OptimConfig(lr=lr, min_lr=lr / 10, warmup_epochs=3, total_epochs=60),
        neuron=NeuronConfig(device="cpu"),
        wandb=WandbConfig(mode=wandb),
    )


def test_loss_falls_and_wandb_writes_offline(shards, tmp_path):
    # Three pages (~6 batches) walked again and again: the model must learn them.
    cfg = _cfg(shards, tmp_path, lr=1e-2, wandb="offline")
    trainer = LocalTrainer(cfg, max_pages=3, tokenizer=load_tokenizer())
    telemetry = Telemetry(cfg, role="local", name="test-local")
    try:
        history = run(trainer, steps=20, log_every=5, telemetry=telemetry, progress=False)
    finally:
        telemetry.close()
    losses = [s.loss for s in history]
    assert [s.step for s in history] == list(range(1, 21))
    assert all(s.applied for s in history)
    # Measured: first 5 ~9.7, last 5 ~4.4 (from ln(50257) = 10.8 at the seeded init).
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 2.0, f"loss did not fall: first 5 {first:.3f}, last 5 {last:.3f}"
    assert trainer.batcher.state_dict()["passes"] >= 2  # the walk wrapped around
    assert trainer.store.tags() == ["epoch-20"]  # pushed once, at the end
    runs = list((tmp_path / "logs").rglob("*.wandb"))
    assert runs and b"loss" in runs[0].read_bytes()


def test_resume_continues_exactly_where_the_push_stood(shards, tmp_path):
    cfg = _cfg(shards, tmp_path)
    tok = load_tokenizer()
    first = LocalTrainer(cfg, max_pages=8, tokenizer=tok)
    run(first, steps=3, push_every=2, progress=False)  # pushes epoch-2 and epoch-3
    assert first.store.tags() == ["epoch-2", "epoch-3"]
    pushed = first.store.pull(3)

    resumed = LocalTrainer(cfg, max_pages=8, tokenizer=tok)
    assert parameter_hash(resumed.model) != pushed.manifest["parameter_hash"]  # fresh weights
    assert resumed.resume() == 3
    assert resumed.step == 3
    assert parameter_hash(resumed.model) == pushed.manifest["parameter_hash"]
    assert parameter_hash(resumed.model) == parameter_hash(first.model)
    saved, loaded = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert saved["state"].keys() == loaded["state"].keys()
    for key, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(value, loaded["state"][key][name]), (key, name)
    assert resumed.batcher.state_dict() == first.batcher.state_dict()

    # `first` continues uninterrupted; `resumed` must take the same batch and the same step.
    assert torch.equal(resumed.next_batch(), first.next_batch())
    a, b = first.train_step(), resumed.train_step()
    assert (a.step, a.lr, a.loss) == (b.step, b.lr, b.loss) == (4, a.lr, a.loss)
    assert parameter_hash(first.model) == parameter_hash(resumed.model)


def test_resume_on_an_empty_store_starts_fresh(shards, tmp_path):
    trainer = LocalTrainer(_cfg(shards, tmp_path), max_pages=2, tokenizer=load_tokenizer())
    assert trainer.resume() is None and trainer.step == 0


def test_resume_refuses_a_checkpoint_without_run_state(shards, tmp_path):
    trainer = LocalTrainer(_cfg(shards, tmp_path), max_pages=2, tokenizer=load_tokenizer())
    trainer.store.push(4, trainer.model, None, {"loss": 1.0})  # e.g. a swarm checkpoint
    with pytest.raises(ResumeError, match="--no-resume"):
        trainer.resume()
    assert trainer.step == 0


def test_looping_batcher_wraps_and_resumes_mid_pass():
    tok = load_tokenizer()
    texts = ["The quick brown fox jumps over the lazy dog. " * 3, "Hello world, again. " * 4]
    per_pass = num_batches(texts, tok, seq_len=8, batch_size=2)
    assert per_pass >= 2
    batcher = LoopingBatcher(texts, tok, seq_len=8, batch_size=2)
    batches = [next(batcher) for _ in range(2 * per_pass + 1)]
    assert all(torch.equal(batches[per_pass + i], batches[i]) for i in range(per_pass))
    assert batcher.state_dict()["passes"] == 2

    replay = LoopingBatcher(texts, tok, seq_len=8, batch_size=2)
    for _ in range(per_pass + 1):  # stop inside the second pass
        next(replay)
    state = replay.state_dict()
    assert state["passes"] == 1 and state["batches"] == per_pass + 1
    again = LoopingBatcher(texts, tok, seq_len=8, batch_size=2)
    again.load_state_dict(state)
    assert torch.equal(next(again), batches[per_pass + 1])
    with pytest.raises(ValueError, match="fewer tokens than one batch"):
        next(LoopingBatcher(["hi"], tok, seq_len=8, batch_size=2))


def test_train_local_script_pushes_then_resumes(shards, tmp_path):
    spec = importlib.util.spec_from_file_location("train_local", ROOT / "scripts/train_local.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    flags = ["--data.dir", str(shards), "--store.dir", str(tmp_path / "store"),
             "--logging.dir", str(tmp_path / "logs"), "--wandb.mode", "disabled",
             "--neuron.device", "cpu", "--data.seq_len", "32", "--data.batch_size", "1",
             "--max_pages", "4", "--no-progress"]
    assert script.main([*flags, "--steps", "2", "--push_every", "0"]) == 0
    assert script.main([*flags, "--steps", "3"]) == 0  # resumes at 2, trains one more
    tags = sorted(p.name for p in (tmp_path / "store").iterdir() if p.name.startswith("epoch-"))
    assert tags == ["epoch-2", "epoch-3"]
