"""Per-sender statistics count delivered tensor bytes, not whatever a sender puts on the wire."""

from __future__ import annotations

import asyncio

from hivemind.proto import averaging_pb2, runtime_pb2

from hivemind_utils.round_stats import _count, _Flow, payload_bytes


def _part(payload: bytes, *, pad: int = 0) -> averaging_pb2.AveragingData:
    """An all-reduce message; ``pad`` junk bytes go into fields that carry no tensor."""
    return averaging_pb2.AveragingData(
        code=averaging_pb2.PART_FOR_AVERAGING, group_id=b"g" * (8 + pad),
        peer_id=b"p" * (4 + pad), weight=1.0,
        tensor_part=runtime_pb2.Tensor(buffer=payload, size=[len(payload) // 4],
                                       dtype="float32"))


async def _drain(messages: list[averaging_pb2.AveragingData]) -> _Flow:
    async def stream():
        for message in messages:
            yield message

    flow = _Flow()
    async for _ in _count(stream(), flow):
        pass
    return flow


def test_padding_earns_no_bandwidth():
    honest = asyncio.run(_drain([_part(b"\0" * 4000) for _ in range(3)]))
    padded = asyncio.run(_drain([_part(b"\0" * 4000, pad=50_000) for _ in range(3)]))
    assert honest.payload == padded.payload == 12_000 and honest.parts == padded.parts == 3
    assert padded.bytes > 10 * honest.bytes  # the wire count still shows what was sent


def test_message_without_a_tensor_carries_no_payload():
    assert payload_bytes(averaging_pb2.AveragingData(group_id=b"x" * 100)) == 0


def test_the_padder_red_team_pads_the_wire_not_the_tensor():
    """`--neuron.adversary padder`'s compression: the message grows 1-3x through an unknown
    field that hivemind parses and drops; the decoded tensor and the payload count are the
    honest ones."""
    import torch
    from hivemind.compression import CompressionInfo, NoCompression

    from template.miner.adversary import PaddedCompression

    tensor = torch.randn(1000)
    info = CompressionInfo.from_tensor(tensor)
    honest, padded = NoCompression().compress(tensor, info), PaddedCompression().compress(
        tensor, info)
    assert 2 * honest.ByteSize() <= padded.ByteSize() <= 4.1 * honest.ByteSize()
    wire = runtime_pb2.Tensor.FromString(padded.SerializeToString())
    assert torch.equal(NoCompression().extract(wire), tensor)
    message = averaging_pb2.AveragingData(tensor_part=wire)
    assert payload_bytes(message) == len(honest.buffer) == 4000
