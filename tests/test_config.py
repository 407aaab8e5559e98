"""The config tree: flags, defaults for the devnet, frozen values, errors that name the flag."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from template.config import (
    LOCAL_NETWORK,
    AveragingConfig,
    Config,
    ConfigError,
    build_parser,
    config_from_namespace,
    parse_config,
)


def test_defaults_run_the_local_devnet():
    cfg = parse_config([])
    assert cfg.subtensor.network == LOCAL_NETWORK
    assert cfg.store.kind == "local"
    assert cfg.data.source == "local"
    assert cfg.wandb.mode == "offline"


def test_bittensor_style_flags_reach_their_sections():
    cfg = parse_config([
        "--netuid", "7", "--wallet.name", "m1", "--wallet.hotkey", "h1",
        "--subtensor.network", "finney", "--axon.port", "9000", "--logging.debug",
        "--neuron.initial_peers", "/ip4/1.2.3.4/tcp/8009/p2p/QmA", "/ip4/1.2.3.5/tcp/8009/p2p/QmB",
        "--dht.port", "8009", "--averaging.compression", "fp16",
        "--blacklist.force_validator_permit",
        "false",
    ])
    assert cfg.netuid == 7
    assert (cfg.wallet.name, cfg.wallet.hotkey) == ("m1", "h1")
    assert cfg.subtensor.network == "finney" and not cfg.subtensor.is_local_devnet
    assert cfg.axon.port == 9000
    assert cfg.logging.debug is True
    assert cfg.neuron.initial_peers == (
        "/ip4/1.2.3.4/tcp/8009/p2p/QmA", "/ip4/1.2.3.5/tcp/8009/p2p/QmB")
    assert cfg.dht.port == 8009
    assert cfg.averaging.compression == "fp16"
    assert cfg.blacklist.force_validator_permit is False


def test_config_is_frozen():
    cfg = parse_config([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.netuid = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.neuron.device = "cuda"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--neuron.device", "tpu"], "--neuron.device"),
        (["--averaging.compression", "zip"], "--averaging.compression"),
        (["--averaging.min_group_size", "4", "--averaging.target_group_size", "2"],
         "--averaging.target_group_size"),
        (["--subtensor.network", "moon"], "--subtensor.network"),
        (["--store.kind", "hub"], "--store.repo_id"),
        (["--neuron.initial_peers", "1.2.3.4:8009"], "--neuron.initial_peers"),
        (["--data.seq_len", "4096"], "--data.seq_len"),
        (["--wandb.mode", "online"], "--wandb.mode"),
        (["--optim.min_lr", "1", "--optim.lr", "0.1"], "--optim.min_lr"),
        (["--neuron.adversary", "evil"], "--neuron.adversary"),
    ],
)
def test_bad_values_name_the_flag(argv, flag):
    ns = build_parser().parse_args(argv)
    with pytest.raises(ConfigError) as err:
        config_from_namespace(ns)
    assert err.value.flag == flag
    assert str(err.value).startswith(flag)


def test_cli_error_is_one_line_and_exit_2():
    code = "from template.config import parse_config; parse_config(['--axon.port', '70000'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--axon.port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_field_has_help():
    parser = build_parser()
    missing = [a.dest for a in parser._actions if a.dest != "help" and not (a.help or "").strip()]
    assert missing == []


def test_replace_revalidates():
    cfg = Config()
    assert cfg.replace(netuid=5).netuid == 5
    with pytest.raises(ConfigError):
        AveragingConfig(target_batch_size=0)


def test_the_tolerance_help_quotes_the_tolerances_the_code_uses():
    from template.consensus import CONSENSUS_TOLERANCE

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "validator.fingerprint_tolerance")
    for compression, tolerance in CONSENSUS_TOLERANCE.items():
        assert f"{compression} {tolerance:g}" in " ".join(action.help.split()), (compression,
                                                                                 action.help)
