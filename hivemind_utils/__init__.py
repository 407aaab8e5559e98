"""hivemind glue: DHT start/join, identity, signed records, swarm state, gradient averaging.

Import bittensor (if at all) before this package: importing bittensor after hivemind silences
hivemind's loggers (see NOTES). Public API, re-exported here:
"""

from hivemind_utils.averaging import RoundFailed, SwarmAverager, averager_prefix, make_compression
from hivemind_utils.dht import (
    BadPeerAddress,
    DHTError,
    DHTJoinError,
    DHTStartError,
    SwarmDHT,
    start_dht,
    visible_maddrs,
)
from hivemind_utils.identity import ensure_identity, identity_path, load_or_create_record_key
from hivemind_utils.records import PeerProgressRecord, progress_key, record_validators
from hivemind_utils.round_stats import AveragingResult, SenderStats
from hivemind_utils.swarm_state import (
    PeerProgress,
    ProgressReporter,
    SwarmState,
    epoch_work_done,
    read_swarm_state,
    report_progress,
    should_start_round,
)

__all__ = [
    "AveragingResult", "BadPeerAddress", "DHTError", "DHTJoinError", "DHTStartError",
    "PeerProgress", "PeerProgressRecord", "ProgressReporter", "RoundFailed", "SenderStats",
    "SwarmAverager", "SwarmDHT", "SwarmState", "averager_prefix", "ensure_identity",
    "epoch_work_done",
    "identity_path", "load_or_create_record_key", "make_compression", "progress_key",
    "read_swarm_state", "record_validators", "report_progress", "should_start_round",
    "start_dht", "visible_maddrs",
]
