"""DHT start/join on loopback: join failures are typed, identities survive restarts."""

from __future__ import annotations

import time

import pytest

from hivemind_utils.dht import BadPeerAddress, DHTJoinError, start_dht, visible_maddrs
from hivemind_utils.identity import (
    ensure_identity,
    identity_path,
    load_or_create_record_key,
    record_key_path,
)
from template.config import DHTConfig, WalletConfig

pytestmark = pytest.mark.multiprocess

RUN = "test-dht"


def test_bootstrap_and_join_on_loopback():
    boot = start_dht(DHTConfig(), run_id=RUN)
    try:
        maddrs = visible_maddrs(boot)
        assert maddrs and all(m.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in m for m in maddrs)
        peer = start_dht(DHTConfig(), run_id=RUN, initial_peers=maddrs)
        try:
            assert peer.store("k", 1, expiration_time=time.time() + 30)
            assert boot.get("k", latest=True).value == 1
        finally:
            peer.shutdown()
    finally:
        boot.shutdown()


def test_join_fails_with_clear_error_when_no_peer_answers():
    dead = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWKzGC1CRXAGhYQDXK8f1Y8DfQyK2jS295nt5adDvBwx1K"
    started = time.monotonic()
    with pytest.raises(DHTJoinError, match="none of the initial peers answered after 2 attempts"):
        start_dht(DHTConfig(join_retries=2), run_id=RUN, initial_peers=[dead])
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("bad", ["garbage", "/ip4/127.0.0.1/tcp/9", "/ip4/1.2.3/tcp/9/p2p/Qm"])
def test_bad_address_is_rejected_before_starting(bad):
    with pytest.raises(BadPeerAddress, match="not a peer multiaddr"):
        start_dht(DHTConfig(), run_id=RUN, initial_peers=[bad])


def test_identity_is_stable_across_restarts(tmp_path):
    wallet = WalletConfig(name="cold", hotkey="hot1", path=str(tmp_path))
    path = identity_path(wallet)
    assert path == tmp_path / "cold" / "hivemind" / "hot1.key"
    assert not path.exists()
    first = start_dht(DHTConfig(), run_id=RUN, identity_path=path)
    first_id, first_subkey = first.peer_id, first.record_subkey
    first.shutdown()
    assert path.is_file() and record_key_path(path).is_file()
    assert ensure_identity(path) == first_id  # the file names the same PeerID
    second = start_dht(DHTConfig(), run_id=RUN, identity_path=path)
    try:
        assert second.peer_id == first_id
        assert second.record_subkey == first_subkey  # progress records overwrite, not duplicate
    finally:
        second.shutdown()
    other = ensure_identity(identity_path(WalletConfig(name="cold", hotkey="hot2",
                                                       path=str(tmp_path))))
    assert other != first_id


def test_record_key_roundtrip(tmp_path):
    key = load_or_create_record_key(tmp_path / "k.rsa")
    again = load_or_create_record_key(tmp_path / "k.rsa")
    assert key.get_public_key().to_bytes() == again.get_public_key().to_bytes()
    assert again.get_public_key().verify(b"x", again.sign(b"x"))
