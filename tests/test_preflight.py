"""Start-up mistakes: exit 2 with ONE line naming the fix; the traceback only with --logging.debug.

The entry points' own ``main`` runs in this process for most mistakes (each fails in well under
a second once bittensor is imported) and as a real ``neurons/*.py`` process for a few, on a
devnet chain in a temp dir. The Hub check talks to a fake Hub on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import huggingface_hub.constants as hf_constants
import psutil
import pytest
from huggingface_hub import HfApi

from template.chain.base import Metagraph, NeuronInfo
from template.chain.local import LocalChain
from template.chain.wallets import create_and_register, create_wallet
from template.config import Config, SubtensorConfig, WalletConfig
from template.preflight import (
    PermitWatch,
    StartupError,
    check_hub_write,
    check_initial_peers,
    check_placeholders,
    permit_problem,
    round_seconds_bound,
    write_problem,
)
from template.transport import free_port
from template.wallet import register_command

REPO = Path(__file__).resolve().parents[1]
PEER_ID = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"  # a well-formed PeerID, no one here


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wallets: miner1 registered, ghost unregistered, nocold without coldkey; val0 registered
    with no stake (no validator permit)."""
    root = tmp_path_factory.mktemp("devnet")
    chain = LocalChain(root / "chain.sqlite", netuid=1)
    try:
        create_and_register(["miner1", "val0"], wallet_path=root / "wallets", chain=chain)
    finally:
        chain.close()
    create_wallet(root / "wallets", "ghost")
    create_wallet(root / "wallets", "nocold")
    (root / "wallets" / "nocold" / "coldkeypub.txt").unlink()
    (root / "wallets" / "nocold" / "coldkey").unlink()
    return root


def flags(root: Path, wallet: str, *extra: str) -> list[str]:
    return ["--subtensor.network", "local-devnet", "--localchain.path", str(root / "chain.sqlite"),
            "--netuid", "1", "--wallet.path", str(root / "wallets"), "--wallet.name", wallet,
            "--logging.dir", str(root / "logs"), "--neuron.workdir", str(root / "work"),
            "--wandb.mode", "disabled", "--axon.port", "0", "--neuron.device", "cpu", *extra]


_ENTRY: dict[str, ModuleType] = {}


def entry(role: str) -> ModuleType:
    if role not in _ENTRY:
        spec = importlib.util.spec_from_file_location(f"_entry_{role}",
                                                      REPO / "neurons" / f"{role}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _ENTRY[role] = module
    return _ENTRY[role]


@contextlib.contextmanager
def _restored_process_state() -> Iterator[None]:
    """main() installs signal handlers and the root log handlers: put ours back after."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    log_handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if handler not in log_handlers:
                handler.close()
        for handler in log_handlers:
            root.addHandler(handler)
        root.setLevel(level)


def run_main(role: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The entry point's exit status and its stderr, run in this process."""
    capsys.readouterr()
    with _restored_process_state():
        code = entry(role).main(argv)
    return code, capsys.readouterr().err


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------- wallet and registration


@pytest.mark.parametrize(("role", "wallet", "extra", "starts", "fix"), [
    ("miner", "minr1", [], "--wallet.name: no wallet 'minr1'", "btcli wallet create"),
    ("miner", "nocold", [], "--wallet.name: wallet 'nocold'", "btcli wallet regen_coldkeypub"),
    ("miner", "miner1", ["--wallet.hotkey", "hot2"], "--wallet.hotkey: wallet 'miner1' has no "
     "hotkey 'hot2' (found: default)", "btcli wallet new_hotkey --wallet.name miner1"),
    ("miner", "ghost", [], "--wallet.hotkey: hotkey 'default' (", "scripts/create_wallets.py "
     "--names ghost"),
    ("validator", "ghost", [], "--wallet.hotkey: hotkey 'default' (", "not registered on netuid "
     "1 of local-devnet"),
    ("validator", "minr1", [], "--wallet.name: no wallet 'minr1'", "found: ghost, miner1, "
     "nocold, val0"),
])
def test_wallet_mistakes_are_one_line_with_the_fix(devnet, capsys, role, wallet, extra, starts,
                                                   fix):
    code, err = run_main(role, flags(devnet, wallet, *extra), capsys)
    line = one_line(err)
    assert code == 2
    assert line.startswith(starts), line
    assert fix in line, line


def test_register_command_names_btcli_off_the_devnet():
    cfg = Config(netuid=7, wallet=WalletConfig(name="cold", hotkey="hot"),
                 subtensor=SubtensorConfig(network="test"))
    assert register_command(cfg) == ("btcli subnet register --netuid 7 --wallet.name cold "
                                     "--wallet.hotkey hot --network test")


def test_the_traceback_comes_only_with_logging_debug(devnet, capsys):
    code, err = run_main("miner", flags(devnet, "minr1", "--logging.debug"), capsys)
    assert code == 2
    assert "Traceback" in err and "StartupError" in err
    assert err.strip().splitlines()[-1].startswith("--wallet.name: no wallet 'minr1'")


def test_a_real_miner_process_exits_2_with_one_line(devnet):
    proc = subprocess.run([sys.executable, str(REPO / "neurons" / "miner.py"),
                           *flags(devnet, "minr1")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr).startswith("--wallet.name: no wallet 'minr1'")


# ---------------------------------------------------------------- network and placeholders


def test_unreachable_initial_peers_fail_in_seconds(devnet, capsys):
    peer = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{PEER_ID}"
    started = time.monotonic()
    code, err = run_main("miner", flags(devnet, "miner1", "--neuron.initial_peers", peer), capsys)
    line = one_line(err)
    assert code == 2
    assert time.monotonic() - started < 5
    assert line.startswith("--neuron.initial_peers: no initial peer accepts connections "
                           "(127.0.0.1:"), line
    assert "Connection refused" in line


def test_one_reachable_initial_peer_is_enough():
    with contextlib.closing(__import__("socket").socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        good = f"/ip4/127.0.0.1/tcp/{listener.getsockname()[1]}/p2p/{PEER_ID}"
        bad = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{PEER_ID}"
        check_initial_peers([bad, good])  # no error


@pytest.mark.parametrize(("argv", "starts", "placeholder"), [
    (["--neuron.initial_peers", "/ip4/<BOOTSTRAP_IP>/tcp/8009/p2p/<BOOTSTRAP_PEER_ID>"],
     "--neuron.initial_peers: '/ip4/<BOOTSTRAP_IP>", "<BOOTSTRAP_IP>"),
    (["--axon.external_ip", "<PUBLIC_IP>"], "--axon.external_ip: '<PUBLIC_IP>'", "<PUBLIC_IP>"),
])
def test_placeholders_left_from_the_pm2_file(devnet, capsys, argv, starts, placeholder):
    code, err = run_main("validator", flags(devnet, "val0", *argv), capsys)
    line = one_line(err)
    assert code == 2
    assert line.startswith(starts), line
    assert f"placeholder {placeholder} (deploy/ecosystem.config.js)" in line


def test_placeholder_wallet_name_is_caught_before_the_wallet_lookup(devnet, capsys):
    code, err = run_main("miner", flags(devnet, "<COLDKEY>"), capsys)
    assert code == 2
    assert one_line(err).startswith("--wallet.name: '<COLDKEY>' still holds the placeholder")


def test_a_placeholder_token_is_named_but_never_echoed():
    with pytest.raises(StartupError) as err:
        check_placeholders(Config(), env={"HF_TOKEN": "hf_<HF_WRITE_TOKEN>"})
    assert str(err.value).startswith("HF_TOKEN: '...' still holds the placeholder")
    assert "hf_" not in str(err.value)
    check_placeholders(Config(), env={"HF_TOKEN": "hf_abc"})  # a real-looking token passes


def test_an_unreachable_subtensor_is_one_line(devnet, capsys):
    argv = flags(devnet, "miner1", "--subtensor.network", f"ws://127.0.0.1:{free_port()}")
    code, err = run_main("validator", argv, capsys)
    line = one_line(err)
    assert code == 2
    assert line.startswith("--subtensor.network: cannot reach ws://127.0.0.1:"), line
    assert "--subtensor.network local-devnet" in line


def test_neurons_default_to_the_real_network(devnet, capsys):
    argv = [a for a in flags(devnet, "miner1") if a not in ("--subtensor.network",
                                                            "local-devnet")]
    code, err = run_main("miner", argv, capsys)  # offline: finney does not resolve
    assert code == 2
    assert one_line(err).startswith("--subtensor.network: cannot reach finney")


@pytest.mark.parametrize(("extra", "fix"), [
    ([], "pass --averaging.allreduce_timeout 100 or --averaging.compression fp16"),
    (["--averaging.compression", "fp16", "--averaging.allreduce_timeout", "20"],
     "pass --averaging.allreduce_timeout 50"),
])
def test_a_timeout_that_cannot_fit_one_round_of_the_preset_is_one_line(devnet, capsys, extra,
                                                                       fix):
    argv = flags(devnet, "miner1", "--model.preset", "gpt2-124m", *extra)
    code, err = run_main("miner", argv, capsys)
    line = one_line(err)
    assert code == 2 and line.startswith("--averaging.allreduce_timeout: "), line
    assert "at 100 Mbit/s" in line and line.endswith(fix), line


def test_the_round_budget_is_the_butterfly_bound():
    assert round_seconds_bound(124_439_808, "none") == pytest.approx(79.6, abs=0.1)
    assert round_seconds_bound(124_439_808, "fp16") == pytest.approx(39.8, abs=0.1)
    assert round_seconds_bound(6_960_768, "none", mbit=1000) == pytest.approx(0.45, abs=0.01)


def test_bad_flag_values_are_one_line(devnet):
    proc = subprocess.run([sys.executable, "-c", "from template.config import parse_config; "
                           "parse_config(['--netuid', '<NETUID>'])"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "argument --netuid: invalid int value: '<NETUID>'" in one_line(proc.stderr)


# ---------------------------------------------------------------- Hugging Face Hub


class _FakeHub(BaseHTTPRequestHandler):
    """``/api/whoami-v2``: ``hf_write`` and ``hf_read`` are alice's tokens, others are 401."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        roles = {"hf_write": "write", "hf_read": "read"}
        if self.path != "/api/whoami-v2" or token not in roles:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"type": "user", "name": "alice", "orgs": [],
                           "auth": {"accessToken": {"role": roles[token]}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Iterator[HfApi]:
    """A fake Hub; online mode; no HF_TOKEN and no saved login unless a test sets them."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield HfApi(endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_hub_without_a_token_exits_2_naming_hf_token_and_the_login(devnet, capsys, hub):
    argv = flags(devnet, "miner1", "--store.kind", "hub", "--store.repo_id", "alice/gpt2")
    code, err = run_main("miner", argv, capsys)
    line = one_line(err)
    assert code == 2
    assert line.startswith("--store.kind: hub needs a Hugging Face token with write access to "
                           "alice/gpt2: set HF_TOKEN or run `hf auth login`"), line


def test_hub_write_token_from_env_or_saved_login_passes(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_write")
    check_hub_write("alice/gpt2", api=hub)
    monkeypatch.delenv("HF_TOKEN")
    Path(hf_constants.HF_TOKEN_PATH).write_text("hf_write")  # what `hf auth login` saves
    check_hub_write("alice/gpt2", api=hub)


@pytest.mark.parametrize(("token", "repo", "flag", "says"), [
    ("hf_read", "alice/gpt2", "--store.repo_id", "the token of 'alice' is read-only"),
    ("hf_write", "bob/gpt2", "--store.repo_id", "cannot create or write repos under 'bob'"),
    ("hf_bogus", "alice/gpt2", "--store.kind", "the Hub rejects HF_TOKEN (401)"),
])
def test_hub_tokens_that_cannot_push_fail_at_start(hub, monkeypatch, token, repo, flag, says):
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(StartupError) as err:
        check_hub_write(repo, api=hub)
    assert err.value.flag == flag
    assert says in str(err.value)


def test_an_unreachable_hub_is_one_error(monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_write")
    with pytest.raises(StartupError, match="--store.kind: hub: cannot reach http://127.0.0.1:"):
        check_hub_write("alice/gpt2", api=HfApi(endpoint=f"http://127.0.0.1:{free_port()}"))


def test_hub_offline_mode_is_named():
    assert hf_constants.HF_HUB_OFFLINE  # conftest
    with pytest.raises(StartupError, match="HF_HUB_OFFLINE is set"):
        check_hub_write("alice/gpt2")


def test_fine_grained_tokens_need_repo_write_on_the_namespace():
    def whoami(scoped: list[dict[str, object]]) -> dict[str, object]:
        return {"name": "alice", "orgs": [{"name": "lab", "roleInOrg": "write"}],
                "auth": {"accessToken": {"role": "fineGrained",
                                         "fineGrained": {"scoped": scoped}}}}

    write_lab = [{"entity": {"name": "lab"}, "permissions": ["repo.content.read", "repo.write"]}]
    read_lab = [{"entity": {"name": "lab"}, "permissions": ["repo.content.read"]}]
    assert write_problem(whoami(write_lab), "lab/gpt2") is None
    assert "without repo.write" in (write_problem(whoami(read_lab), "lab/gpt2") or "")
    read_member = {"name": "alice", "orgs": [{"name": "lab", "roleInOrg": "read"}],
                   "auth": {"accessToken": {"role": "write"}}}
    assert "only read access in the org 'lab'" in (write_problem(read_member, "lab/x") or "")


# ---------------------------------------------------------------- validator permit


def _graph(permit: bool, stake: float) -> Metagraph:
    return Metagraph(netuid=1, block=5, neurons=(
        NeuronInfo(uid=0, hotkey="5V", coldkey="5C", stake=stake, validator_permit=permit),))


def test_permit_watch_warns_at_start_and_again_after_the_interval(caplog):
    now = [0.0]
    cfg = Config(wallet=WalletConfig(name="v", hotkey="h"),
                 subtensor=SubtensorConfig(network="finney"))
    watch = PermitWatch(cfg, interval=600, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="template.preflight"):
        first = watch.check(_graph(False, 0.0), 0)
        now[0] = 599.0
        assert watch.check(_graph(False, 0.0), 0) is None
        now[0] = 600.0
        again = watch.check(_graph(False, 0.0), 0)
    assert first is not None and again == first
    assert first.startswith("uid 0 has no validator permit (stake 0) on netuid 1")
    assert "`btcli stake add --netuid 1 --wallet.name v --wallet.hotkey h`" in first
    assert [r.getMessage() for r in caplog.records] == [first, first]
    assert watch.check(_graph(True, 1000.0), 0) is None
    assert permit_problem(_graph(True, 1000.0), 0, netuid=1, wallet_name="v",
                          hotkey_name="h") is None


def test_a_real_validator_without_stake_says_so_at_start(devnet):
    log = devnet / "val0.out"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "neurons" / "validator.py"),
                                 *flags(devnet, "val0")], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, WANDB_MODE="disabled"))
    try:
        deadline = time.monotonic() + 60
        while "has no validator permit" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        descendants = []
        with contextlib.suppress(psutil.NoSuchProcess):
            descendants = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: pgid == pid
        proc.wait(timeout=10)
        psutil.wait_procs(descendants, timeout=5)
    line = next(x for x in log.read_text().splitlines() if "has no validator permit" in x)
    assert " W template.preflight: uid " in line
    assert "`python scripts/create_wallets.py --names val0 --stake val0=1000`" in line
