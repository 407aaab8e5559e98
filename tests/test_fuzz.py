"""Fuzzing the surfaces a neuron reads from the network, seed fixed: the validator's view of
Train and AllReduce answers, DHT progress records, checkpoint manifests (the Axon's request
side is tests/test_axon_fuzz.py, shards tests/test_shards.py).

Every input gets a typed answer (a ``Rejection``, a rejection string, a ``CheckpointError``)
or is accepted because the mutation happened to be harmless; nothing raises anything else. The
counts per surface are asserted loosely (most inputs must be rejected) so that a checker that
quietly started accepting everything fails here.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

import pytest
import torch
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey
from transformers import GPT2Config, GPT2LMHeadModel

from hivemind_utils.records import PeerProgressRecord, parse_progress
from template import protocol as P
from template.checkpoints import CheckpointError, LocalStore

SEED = 20261204
INPUTS = 300
PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
PEER2 = "QmQ7TnVMMwpLuoyGMqNg8o3sKMKZt8DmTB1Eo3BtNE4W7Z"
HOTKEY = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


def junk(rng: random.Random) -> Any:
    """One value of a kind a hostile peer might send where something else belongs."""
    pool: list[Any] = [
        None, True, -1, 0, 2**70, -(2**63), 1.5, math.nan, math.inf, -math.inf, "", "x" * 5000,
        "\x00\udcff", b"\xff" * 8, [], [None], [math.nan] * 3, ["a", "b"], [[1.0] * 3] * 2,
        {"a": 1}, {"__proto__": []}, [1e308] * 64, list(range(10_000)),
        [[math.inf]] * 2, "QmNotAPeer", PEER, rng.random() * 1e9, -rng.random(),
    ]
    return rng.choice(pool)


def mutate(rng: random.Random, base: dict[str, Any], *, extra_keys: bool = True
           ) -> dict[str, Any]:
    out = dict(base)
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.15 and out:
            out.pop(rng.choice(sorted(out)))
        elif roll < 0.25 and extra_keys:
            out[rng.choice(["extra", "__class__", "dendrite", "zz" * 40])] = junk(rng)
        elif out:
            out[rng.choice(sorted(out))] = junk(rng)
    return out


def _count(outcomes: Counter, key: str) -> None:
    outcomes[key] += 1


# ------------------------------------------------------------------ validator-side responses

TRAIN = dict(epoch=4, nonce=77, max_batches=8, loss=3.2, pages=[5, 9, 2], batches=[0, 1, 2],
             samples=24, sketches=[[0.1, -0.2, 0.3, 0.4]] * 3, sketch_seed=42, peer_id=PEER,
             model_fingerprint=[1.0, 2.0])
ALLREDUCE = dict(epoch=4, round_id="e4-r1", success=True, peer_id=PEER,
                 participants=[PEER, PEER2], bytes_sent=10, bytes_received=12, seconds=0.5,
                 fingerprint=[0.5] * 4, commitment="")


@pytest.mark.parametrize("kind", ["train", "allreduce"])
def test_validator_side_responses_get_a_typed_verdict(kind):
    rng = random.Random(SEED)
    outcomes: Counter = Counter()
    for _ in range(INPUTS):
        fields = mutate(rng, TRAIN if kind == "train" else ALLREDUCE, extra_keys=False)
        cls = P.Train if kind == "train" else P.AllReduce
        try:  # what the Dendrite would build from the JSON it received
            cls.model_validate(fields)
        except ValueError:
            _count(outcomes, "schema")
        forged = cls.model_construct(**fields)  # worst case: a payload that skipped pydantic
        if kind == "train":
            verdict = P.validate_train_response(
                forged, epoch=4, nonce=77, sketch_seed=42,
                limits=P.TrainLimits(sketch_dims=4, fingerprint_dims=2))
        else:
            verdict = P.validate_allreduce_response(forged, epoch=4, round_id="e4-r1",
                                                    limits=P.AllReduceLimits(fingerprint_dims=4))
        assert verdict is None or isinstance(verdict, P.Rejection), verdict
        _count(outcomes, "accepted" if verdict is None else verdict.reason.value)
    rejected = INPUTS - outcomes["accepted"]
    assert rejected >= 0.6 * INPUTS, outcomes
    print(kind, dict(outcomes))


# ------------------------------------------------------------------ DHT progress records


def test_progress_records_from_the_dht_get_a_record_or_a_reason():
    rng = random.Random(SEED)
    subkey = RSASignatureValidator(RSAPrivateKey()).local_public_key
    base = dict(peer_id=b"peer", hotkey=HOTKEY, epoch=3, samples=40, tokens_per_second=9.5,
                time=get_dht_time(), finished=False)
    assert isinstance(parse_progress(subkey, base, now=get_dht_time()), PeerProgressRecord)
    outcomes: Counter = Counter()
    for i in range(INPUTS):
        value: Any = mutate(rng, base) if i % 10 else junk(rng)
        key = subkey if i % 7 else rng.choice([b"", b"[owner:]", "str", None, subkey + b"x"])
        got = parse_progress(key, value, now=get_dht_time())
        assert isinstance(got, (PeerProgressRecord, str)), got
        _count(outcomes, "accepted" if isinstance(got, PeerProgressRecord) else got.split(":")[0])
    assert INPUTS - outcomes["accepted"] >= 0.6 * INPUTS, outcomes
    print(dict(outcomes))


# ------------------------------------------------------------------ checkpoint manifests


def test_manifests_that_lie_or_break_get_a_checkpoint_error(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96,
                                       n_positions=32))
    store = LocalStore(tmp_path)
    store.push(1, model, None, {"loss": 1.0})
    path = tmp_path / "epoch-1" / "manifest.json"
    honest = json.loads(path.read_text())
    rng = random.Random(SEED)
    outcomes: Counter = Counter()
    for i in range(INPUTS):
        manifest = mutate(rng, honest)
        if i % 5 == 0 and isinstance(manifest.get("files"), dict):  # lie about one file
            files = dict(manifest["files"])
            name = rng.choice(sorted(files))
            files[name] = mutate(rng, files[name]) if isinstance(files[name], dict) else junk(rng)
            manifest["files"] = files
        text = json.dumps(manifest, default=repr)  # NaN/inf go out as JSON's NaN/Infinity
        path.write_text(text if i % 11 else "{" + text[:-3])  # or truncated, not JSON at all
        try:
            store.pull(1)
        except CheckpointError as err:
            _count(outcomes, type(err).__name__)
        else:
            _count(outcomes, "accepted")
    path.write_text(json.dumps(honest))
    assert store.pull(1).manifest == honest  # the store still serves the honest checkpoint
    assert INPUTS - outcomes["accepted"] >= 0.6 * INPUTS, outcomes
    print(dict(outcomes))
