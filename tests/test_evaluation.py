"""Held-out evaluation: loss and perplexity of a tiny GPT-2 on the real held-out slice of the
demo shards, paired win counting, the flag threshold, eval.json in both stores (a malformed one
is ignored with a warning, never a crash), and the evaluator process scoring each epoch once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from template.checkpoints import LocalStore, MissingCheckpointError
from template.checkpoints.base import EvalError
from template.checkpoints.evals import dump_eval, parse_eval
from template.config import ModelConfig
from template.data import ensure_demo_shards, epoch_batches, load_tokenizer, local_source
from template.data.assignment import assign_pages, heldout_pages
from template.evaluation import (
    batch_losses,
    eval_record,
    heldout_slice,
    is_flagged,
    perplexity,
    sample_batches,
    win_fraction,
)
from template.evaluator import Evaluator
from template.model import build_model

REPO = Path(__file__).resolve().parents[1]
SEQ, BATCH, PAGES = 64, 4, 200


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    ensure_demo_shards(folder, max_pages=PAGES)
    return folder


@pytest.fixture(scope="module")
def heldout(shards):
    return heldout_slice(local_source(shards), load_tokenizer(offline=True), seq_len=SEQ,
                         batch_size=BATCH)


def _record(epoch: int = 3, **changes) -> dict:
    base = eval_record(epoch=epoch, tag=f"epoch-{epoch}", losses=[5.0, 4.0],
                       previous_epoch=epoch - 1, previous_losses=[5.5, 3.9], threshold=0.1,
                       tokens=512, seconds=1.5)
    return base | changes


# ------------------------------------------------------------------ pure functions


def test_heldout_slice_is_the_tail_of_the_shards(shards, heldout):
    assert heldout.pages == heldout_pages(PAGES) == range(194, 200)
    assert len(heldout.batches) >= 4 and all(b.shape == (BATCH, SEQ) for b in heldout.batches)
    assert heldout.tokens == len(heldout.batches) * BATCH * SEQ
    with pytest.raises(ValueError, match="--data.batch_size"):
        heldout_slice(local_source(shards), load_tokenizer(offline=True), seq_len=1024,
                      batch_size=64)


def test_loss_and_perplexity_of_a_tiny_model(heldout):
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    losses = batch_losses(model, heldout.batches[:2])
    assert model.training  # mode restored
    # fresh GPT-2 init: close to uniform over the 50257 tokens
    assert all(abs(loss - math.log(50257)) < 0.5 for loss in losses), losses
    ids = heldout.batches[0]
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               ids[:, 1:].reshape(-1))
    assert losses[0] == pytest.approx(float(manual), rel=1e-5)
    record = eval_record(epoch=1, tag="epoch-1", losses=losses, previous_epoch=None,
                         previous_losses=None, threshold=0.1, tokens=2 * BATCH * SEQ,
                         seconds=0.2)
    assert record["perplexity"] == pytest.approx(math.exp(sum(losses) / 2))
    assert record["previous_loss"] is None and not record["flagged"]
    assert perplexity(10**6) == math.exp(700)  # finite for any loss


def test_batch_sample_is_seeded_per_run_and_epoch():
    picked = sample_batches(100, 8, run_id="r", epoch=3)
    assert picked == sample_batches(100, 8, run_id="r", epoch=3) == sorted(set(picked))
    assert len(picked) == 8 and all(0 <= i < 100 for i in picked)
    assert picked != sample_batches(100, 8, run_id="r", epoch=4)
    assert picked != sample_batches(100, 8, run_id="other", epoch=3)
    assert sample_batches(5, 16, run_id="r", epoch=0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        sample_batches(0, 4, run_id="r", epoch=0)


def test_paired_win_fraction_counts_ties_half():
    assert win_fraction([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 5.0]) == pytest.approx(2.5 / 4)
    assert win_fraction([1.0], [0.5]) == 0.0
    with pytest.raises(ValueError):
        win_fraction([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        win_fraction([], [])


def test_flagged_only_when_the_rise_exceeds_the_threshold():
    assert not is_flagged(None, 0.1)
    assert not is_flagged(-3.0, 0.1) and not is_flagged(0.1, 0.1)
    assert is_flagged(0.1001, 0.1)
    rose = eval_record(epoch=2, tag="epoch-2", losses=[6.0, 6.4], previous_epoch=1,
                       previous_losses=[5.9, 6.1], threshold=0.1, tokens=1, seconds=0.0)
    assert rose["delta"] == pytest.approx(0.2) and rose["flagged"]
    assert rose["win_fraction"] == 0.0
    assert not (rose | eval_record(epoch=2, tag="epoch-2", losses=[6.0, 6.4], previous_epoch=1,
                                   previous_losses=[5.9, 6.1], threshold=0.25, tokens=1,
                                   seconds=0.0))["flagged"]


# ------------------------------------------------------------------ eval.json in the stores


def _tiny_checkpoint_model(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96,
                                      n_positions=32))


def _round_trip(store) -> None:
    store.push(3, _tiny_checkpoint_model(0), None, {"run_id": "r"})
    assert store.read_eval(3) is None  # none yet
    record = _record()
    store.write_eval(3, record)
    assert store.read_eval(3) == json.loads(json.dumps(record))
    store.write_eval(3, record | {"heldout_loss": 4.25})  # replaces the earlier one
    assert store.read_eval(3)["heldout_loss"] == 4.25
    ckpt = store.pull(3)  # eval.json is outside the manifest: verification unaffected
    assert "eval.json" not in ckpt.manifest["files"]
    assert "eval.json" in (ckpt.directory / "README.md").read_text()  # the card points to it
    assert store.latest_epoch() == 3 and store.tags() == ["epoch-3"]
    with pytest.raises(MissingCheckpointError):
        store.write_eval(4, _record(epoch=4))
    assert store.read_eval(4) is None
    with pytest.raises(EvalError):
        store.write_eval(3, record | {"heldout_loss": float("nan")})


def test_eval_round_trip_in_the_local_store(tmp_path):
    store = LocalStore(tmp_path / "ckpt")
    _round_trip(store)
    assert (tmp_path / "ckpt" / "epoch-3" / "eval.json").is_file()


@pytest.fixture
def hub(monkeypatch):
    """tests/test_checkpoints.py's fake Hub, also resolving the `main` branch as the real Hub
    does (read_eval downloads evals/<tag>.json at `main`)."""
    import threading

    import huggingface_hub.constants
    from test_checkpoints import FakeHub, _Handler

    original = _Handler._resolve

    def resolve(self, repo, revision, filename, head):
        return original(self, repo, repo["head"] if revision == "main" else revision,
                        filename, head)

    monkeypatch.setattr(_Handler, "_resolve", resolve)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_eval_round_trip_in_the_hub_store(hub, tmp_path):
    from template.checkpoints import HubStore

    store = HubStore("org/run", token="hf_fake", endpoint=hub.endpoint,
                     cache_dir=tmp_path / "cache", sleep=lambda s: None)
    _round_trip(store)
    head = hub.repos["org/run"]["commits"][hub.repos["org/run"]["head"]]
    assert "evals/epoch-3.json" in head  # on main, not in the tag's commit
    tagged = hub.repos["org/run"]["commits"][hub.repos["org/run"]["tags"]["epoch-3"]]
    assert "evals/epoch-3.json" not in tagged
    head["evals/epoch-3.json"] = b"{not json"
    assert store.read_eval(3) is None


@pytest.mark.parametrize("damage", [
    b"{not json", b"[]", b"x" * 70_000,
    json.dumps(_record() | {"version": 2}).encode(),
    json.dumps(_record() | {"epoch": 4}).encode(),
    json.dumps(_record() | {"tag": "epoch-4"}).encode(),
    json.dumps(_record() | {"tag": "epoch-3-aaaaaaaaaaaa"}).encode(),  # another tag's file
    json.dumps(_record() | {"heldout_loss": "low"}).encode(),
    json.dumps(_record() | {"perplexity": 0.5}).encode(),
    json.dumps(_record() | {"batches": 0}).encode(),
    json.dumps(_record() | {"flagged": 1}).encode(),
    json.dumps(_record() | {"win_fraction": 1.5}).encode(),
    json.dumps(_record() | {"delta": None}).encode(),  # comparison fields half set
    json.dumps(_record() | {"previous_epoch": 3}).encode(),
    json.dumps({k: v for k, v in _record().items() if k != "seconds"}).encode(),
    json.dumps({k: v for k, v in _record().items() if k != "delta"}).encode(),
    b'{"version": 1, "epoch": 3, "heldout_loss": NaN}',
])
def test_a_malformed_eval_json_is_ignored_with_a_warning(tmp_path, caplog, monkeypatch, damage):
    # importing bittensor (another test may do it first) disables the loggers that exist then
    monkeypatch.setattr(logging.getLogger("template.checkpoints.evals"), "disabled", False)
    store = LocalStore(tmp_path)
    store.push(3, _tiny_checkpoint_model(0), None, {})
    (tmp_path / "epoch-3" / "eval.json").write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="template.checkpoints.evals"):
        assert store.read_eval(3) is None
    assert "ignoring the evaluation" in caplog.text
    with pytest.raises(EvalError):
        parse_eval(damage, epoch=3, tag="epoch-3")
    store.pull(3)  # the checkpoint itself is still fine


def test_dump_eval_refuses_what_parse_eval_would_reject():
    assert parse_eval(dump_eval(_record(), epoch=3, tag="epoch-3"), epoch=3) == _record()
    no_previous = _record(epoch=1) | dict.fromkeys(
        ("previous_epoch", "previous_loss", "win_fraction", "delta"))
    assert parse_eval(dump_eval(no_previous, epoch=1, tag="epoch-1"), epoch=1)["delta"] is None
    with pytest.raises(EvalError):
        dump_eval(_record() | {"seconds": float("inf")}, epoch=3, tag="epoch-3")
    with pytest.raises(EvalError):
        dump_eval(_record() | {"extra": object()}, epoch=3, tag="epoch-3")


# ------------------------------------------------------------------ the evaluator


def _train(model, batches, steps: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        ids = batches[step % len(batches)]
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture(scope="module")
def run_store(tmp_path_factory, shards) -> Path:
    """Epoch 1: the initial tiny model trained a little on training pages; epoch 2: epoch 1
    with its weights drowned in noise (what a poisoned round would push)."""
    root = tmp_path_factory.mktemp("run") / "checkpoints"
    store = LocalStore(root)
    source = local_source(shards)
    pages = assign_pages(run_id="r", epoch=0, miner=0, pages_per_miner=40,
                         dataset_size=source.num_pages)
    batches = epoch_batches(source.pages(pages), load_tokenizer(offline=True), seq_len=SEQ,
                            batch_size=BATCH)
    model = build_model(ModelConfig(preset="tiny"), seed=0)
    _train(model, batches, steps=12)
    store.push(1, model, None, {})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    store.push(2, model, None, {})
    return root


def test_evaluator_scores_each_epoch_once_and_flags_the_regression(run_store, heldout,
                                                                  caplog, tmp_path):
    import shutil

    root = tmp_path / "checkpoints"
    shutil.copytree(run_store, root)
    store = LocalStore(root)
    evaluator = Evaluator(store=store, heldout=heldout, model=ModelConfig(preset="tiny"),
                          run_id="r", seed=0, batches=3, threshold=0.1)
    logged: list = []
    evaluator.log_metrics = lambda values, step: logged.append((step, values))
    assert evaluator.pending() == [1, 2]
    with caplog.at_level(logging.INFO, logger="template.evaluator"):
        first, second = evaluator.poll()
    assert evaluator.pending() == [] and evaluator.poll() == []  # each epoch once
    assert store.read_eval(1) == first and store.read_eval(2) == second
    # epoch 1 against the run's initial weights (seed 0), on the same 3 batches
    assert first["previous_epoch"] == 0 and first["batches"] == 3
    assert first["delta"] < 0 and first["win_fraction"] == 1.0 and not first["flagged"]
    assert first["tokens"] == 3 * BATCH * SEQ
    assert second["previous_epoch"] == 1 and second["flagged"]
    # the model just scored is kept as the next epoch's predecessor: epoch 2's weights
    assert second["heldout_loss"] == pytest.approx(
        sum(batch_losses(evaluator.previous, [heldout.batches[i] for i in sample_batches(
            len(heldout.batches), 3, run_id="r", epoch=2)])) / 3)
    assert second["win_fraction"] == 0.0 and second["delta"] > 0.1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "FLAGGED" in warnings[0].message
    assert "epoch 1 (epoch-1): held-out loss" in caplog.text
    assert [step for step, _ in logged] == [1, 2] and logged[1][1]["heldout/flagged"] == 1.0


def test_evaluator_entry_point_stops_after_the_last_epoch(run_store, shards, tmp_path):
    import shutil

    root = tmp_path / "checkpoints"
    shutil.copytree(run_store, root)
    proc = subprocess.run(
        [sys.executable, str(REPO / "neurons" / "evaluator.py"), "--store.dir", str(root),
         "--data.dir", str(shards), "--data.seq_len", str(SEQ), "--data.batch_size",
         str(BATCH), "--neuron.run_id", "r", "--neuron.epochs", "2", "--wandb.mode",
         "disabled", "--logging.dir", str(tmp_path / "logs"), "--evaluator.poll_interval",
         "0.2"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FLAGGED" in proc.stderr and "the last one: stopping" in proc.stderr
    assert LocalStore(root).read_eval(2)["flagged"]
    bad = subprocess.run(
        [sys.executable, str(REPO / "neurons" / "evaluator.py"), "--store.dir", str(root),
         "--data.dir", str(tmp_path / "nowhere"), "--wandb.mode", "disabled",
         "--logging.dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert bad.returncode == 2 and "build_shards.py" in bad.stderr.strip().splitlines()[-1]
