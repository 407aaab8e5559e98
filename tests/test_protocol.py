"""Synapse schemas and the pure validation functions (no network)."""

from __future__ import annotations

import json
import math

import bittensor as bt
import pytest
from pydantic import ValidationError

from template import protocol as P
from template.protocol import Reason

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
PEER2 = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def good_train(**changes) -> P.Train:
    fields = dict(epoch=4, nonce=77, max_batches=8, loss=3.2, pages=[5, 9, 2], batches=[0, 1, 2],
                  samples=24, sketches=[[0.1, -0.2, 0.3, 0.4]] * 3, sketch_seed=42,
                  peer_id=PEER, model_fingerprint=[1.0, 2.0])
    fields.update(changes)
    return P.Train.model_construct(**fields)  # skips pydantic, like a forged payload would


def good_allreduce(**changes) -> P.AllReduce:
    fields = dict(epoch=4, round_id="e4-r1", success=True, peer_id=PEER,
                  participants=[PEER, PEER2], bytes_sent=10, bytes_received=12, seconds=0.5,
                  fingerprint=[0.5] * 4)
    fields.update(changes)
    return P.AllReduce.model_construct(**fields)


def rejected(syn: P.Train, **kwargs) -> P.Rejection | None:
    base = dict(epoch=4, nonce=77, limits=P.TrainLimits(sketch_dims=4, fingerprint_dims=2),
                sketch_seed=42)
    base.update(kwargs)
    return P.validate_train_response(syn, **base)


def test_valid_train_response_passes_and_validates_through_pydantic():
    syn = good_train()
    assert rejected(syn) is None
    # The same content parses with the schema (round trip through JSON).
    parsed = P.Train.model_validate_json(P.Train(**syn.model_dump()).model_dump_json())
    assert parsed.sketches == syn.sketches and rejected(parsed) is None


@pytest.mark.parametrize(("changes", "reason"), [
    ({"loss": math.nan}, Reason.NOT_FINITE),
    ({"loss": math.inf}, Reason.NOT_FINITE),
    ({"loss": -1.0}, Reason.NEGATIVE),
    ({"loss": None}, Reason.MALFORMED),
    ({"sketches": [[0.1, math.nan, 0.3, 0.4]] * 3}, Reason.NOT_FINITE),
    ({"model_fingerprint": [1.0, math.inf]}, Reason.NOT_FINITE),
    ({"pages": [5, -1]}, Reason.NEGATIVE),
    ({"pages": [5, 5]}, Reason.DUPLICATE),
    ({"batches": [0, 0, 1]}, Reason.DUPLICATE),
    ({"pages": [1.5]}, Reason.MALFORMED),
    ({"pages": list(range(P.MAX_PAGES + 1))}, Reason.TOO_LARGE),
    ({"batches": list(range(9)), "sketches": [[0.0] * 4] * 9, "samples": 99}, Reason.TOO_LARGE),
    ({"sketches": [[0.0] * 4] * 2}, Reason.INCONSISTENT),
    ({"sketches": [[0.0] * 5] * 3}, Reason.INCONSISTENT),
    ({"sketches": [[0.0] * (P.MAX_SKETCH_DIMS + 1)] * 3}, Reason.TOO_LARGE),
    ({"model_fingerprint": [1.0]}, Reason.INCONSISTENT),
    ({"samples": 2}, Reason.INCONSISTENT),
    ({"samples": -5}, Reason.NEGATIVE),
    ({"peer_id": "not a peer id!"}, Reason.MALFORMED),
    ({"peer_id": ""}, Reason.MALFORMED),
    ({"epoch": 3}, Reason.WRONG_EPOCH),
    ({"nonce": 78}, Reason.WRONG_NONCE),
    ({"sketch_seed": 43}, Reason.WRONG_SEED),
    ({"error": "not training yet"}, Reason.MINER_ERROR),
])
def test_bad_train_responses_are_rejected_with_reason(changes, reason):
    rejection = rejected(good_train(**changes))
    assert rejection is not None and rejection.reason is reason, rejection


def test_sketch_dims_are_free_but_consistent_without_limits():
    free = dict(limits=P.TrainLimits())
    assert rejected(good_train(sketches=[[0.0] * 7] * 3), **free) is None
    mixed = good_train(sketches=[[0.0] * 7, [0.0] * 7, [0.0] * 6])
    assert rejected(mixed, **free).reason is Reason.INCONSISTENT
    huge = good_train(sketches=[[0.0] * (P.MAX_SKETCH_DIMS + 1)] * 3)
    assert rejected(huge, **free).reason is Reason.TOO_LARGE


@pytest.mark.parametrize(("field", "value", "error_type"), [
    ("loss", math.nan, "finite_number"),
    ("sketches", [[0.0] * (P.MAX_SKETCH_DIMS + 1)], "too_long"),
    ("sketches", [[0.0]] * (P.MAX_BATCHES + 1), "too_long"),
    ("pages", [-1], "greater_than_equal"),
    ("peer_id", "Q" * (P.MAX_PEER_ID_LEN + 1), "string_too_long"),
    ("max_batches", P.MAX_BATCHES + 1, "less_than_equal"),
])
def test_schema_caps_refuse_to_parse(field, value, error_type):
    with pytest.raises(ValidationError) as info:
        P.Train(**{field: value})
    assert f"type={error_type}" in str(info.value)


def test_json_nan_token_is_refused_by_the_schema():
    body = P.Train(epoch=1).model_dump(mode="json")
    text = json.dumps(body).replace('"loss": null', '"loss": NaN')
    assert "NaN" in text
    with pytest.raises(ValidationError):
        P.Train(**json.loads(text))  # json.loads accepts NaN; the schema does not


def test_request_fields_are_covered_by_the_signed_body_hash():
    a, b = P.Train(epoch=1, nonce=5), P.Train(epoch=1, nonce=6)
    assert a.body_hash != b.body_hash
    assert P.Train(epoch=1, nonce=5, loss=2.0).body_hash == a.body_hash  # responses not signed
    r1 = P.AllReduce(round_id="x", learning_rate=0.1)
    assert r1.body_hash != P.AllReduce(round_id="x", learning_rate=0.2).body_hash


def test_headers_round_trip_and_no_required_fields():
    syn = P.Train(epoch=2, nonce=3)
    headers = syn.to_headers()
    assert not any(k.startswith("bt_header_input_obj") for k in headers)
    assert P.Train.from_headers(headers).name == "Train"


@pytest.mark.parametrize(("status", "message", "reason"), [
    (403, "Forbidden. Key is blacklisted", Reason.BLACKLISTED),
    (401, "Not Verified", Reason.UNVERIFIED),
    (408, "Request timeout", Reason.TIMEOUT),
    (503, "Service unavailable", Reason.UNREACHABLE),
    (422, "Failed to parse response: Input should be a finite number [type=finite_number",
     Reason.NOT_FINITE),
    (422, "Failed to parse response: List should have at most 256 items [type=too_long",
     Reason.TOO_LARGE),
    (422, "Failed to parse response: Expecting value", Reason.MALFORMED),
    (429, "busy: this hotkey already has an AllReduce round pending", Reason.BUSY),
    (413, "body of 2000000 bytes > 1048576", Reason.TOO_LARGE),
    (422, "rejected request: inconsistent: need 1 <= min_group_size", Reason.INCONSISTENT),
    (422, "rejected request: something-new: detail", Reason.MALFORMED),
    (400, "body hash mismatch: body differs", Reason.UNVERIFIED),
])
def test_transport_failures_map_to_reasons(status, message, reason):
    syn = good_train()
    syn.dendrite = bt.TerminalInfo(status_code=status, status_message=message)
    rejection = rejected(syn)
    assert rejection is not None and rejection.reason is reason


def test_train_request_checks():
    assert P.validate_train_request(P.Train(epoch=3, nonce=1)) is None
    assert P.validate_train_request(P.Train(epoch=3), current_epoch=4).reason is Reason.WRONG_EPOCH
    forged = P.Train.model_construct(epoch=-1, nonce=1, max_batches=4)
    assert P.validate_train_request(forged).reason is Reason.NEGATIVE
    forged = P.Train.model_construct(epoch=1, nonce=1, max_batches=0)
    assert P.validate_train_request(forged).reason is Reason.MALFORMED


def test_valid_allreduce_response_passes():
    assert P.validate_allreduce_response(good_allreduce(), epoch=4, round_id="e4-r1") is None


@pytest.mark.parametrize(("changes", "reason"), [
    ({"success": False, "error": "could not find a group"}, Reason.MINER_ERROR),
    ({"round_id": "e4-r2"}, Reason.WRONG_ROUND),
    ({"epoch": 5}, Reason.WRONG_EPOCH),
    ({"participants": [PEER, PEER]}, Reason.DUPLICATE),
    ({"participants": [PEER, "bad id"]}, Reason.MALFORMED),
    ({"participants": [PEER] * (P.MAX_PARTICIPANTS + 1)}, Reason.TOO_LARGE),
    ({"fingerprint": [math.nan] * 4}, Reason.NOT_FINITE),
    ({"fingerprint": [0.0] * 3}, Reason.INCONSISTENT),
    ({"bytes_sent": -1}, Reason.NEGATIVE),
    ({"seconds": math.inf}, Reason.NOT_FINITE),
    ({"peer_id": ""}, Reason.MALFORMED),
])
def test_bad_allreduce_responses_are_rejected(changes, reason):
    rejection = P.validate_allreduce_response(
        good_allreduce(**changes), epoch=4, round_id="e4-r1",
        limits=P.AllReduceLimits(fingerprint_dims=4))
    assert rejection is not None and rejection.reason is reason, rejection


def test_allreduce_request_checks():
    ok = P.AllReduce(epoch=1, round_id="e1-r0", target_group_size=4, min_group_size=2)
    assert P.validate_allreduce_request(ok) is None
    assert P.validate_allreduce_request(ok, current_epoch=2).reason is Reason.WRONG_EPOCH
    inverted = P.AllReduce(epoch=1, round_id="e1-r0", target_group_size=2, min_group_size=3)
    assert P.validate_allreduce_request(inverted).reason is Reason.INCONSISTENT
    assert P.validate_allreduce_request(P.AllReduce(round_id="")).reason is Reason.MALFORMED
    forged = P.AllReduce.model_construct(epoch=1, round_id="r", target_group_size=4,
                                         min_group_size=2, matchmaking_time=math.nan,
                                         allreduce_timeout=5.0, learning_rate=1e-3)
    assert P.validate_allreduce_request(forged).reason is Reason.NOT_FINITE
    peer = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"
    named = P.AllReduce(epoch=1, round_id="e1-r0", expected_peers=[peer])
    assert P.validate_allreduce_request(named) is None
    twice = P.AllReduce(epoch=1, round_id="e1-r0", expected_peers=[peer, peer])
    assert P.validate_allreduce_request(twice).reason is Reason.INCONSISTENT
    garbled = P.AllReduce(epoch=1, round_id="e1-r0", expected_peers=[peer, "not a peer id"])
    assert P.validate_allreduce_request(garbled).reason is Reason.MALFORMED
    with pytest.raises(ValueError):  # more than a group can hold
        P.AllReduce(expected_peers=[peer] * (P.MAX_PARTICIPANTS + 1))
    assert named.body_hash != P.AllReduce(epoch=1, round_id="e1-r0").body_hash  # signed
