"""The live swarm page against a recorded swarm state, and the inspector that serves it.

The recorded state is real: a devnet chain in SQLite (two bound miners, a staked validator with
weights on chain, and a permit holder whose "hotkey" is a ``<script>`` tag), a local checkpoint
store with two checkpoints and their ``eval.json``, miners' ``epochs.jsonl`` and a validator's
persisted state in a workdir, and signed progress records in a hivemind DHT on 127.0.0.1 (one
by a key nobody bound). The page must show what ``--json`` prints, and escape what it shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hivemind_utils.dht import start_dht, visible_maddrs
from hivemind_utils.records import record_key_id
from hivemind_utils.swarm_state import PeerProgress, ProgressReporter, SwarmState
from template.chain.local import LocalChain
from template.chain.wallets import create_wallet
from template.checkpoints.local import LocalStore
from template.config import DHTConfig
from template.inspect_dht import open_sources, parse_args, read_snapshot
from template.svg_charts import bar_chart, line_chart
from template.swarm_page import SwarmPage, render_page, serve_page
from template.swarm_snapshot import ChainView, LocalView, NeuronView, StoreView, build_snapshot
from template.validator.epoch import EpochRecord
from template.validator.scoring import PeerTransfer
from template.validator.state import ValidatorState

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "inspect_dht.py"
RUN = "page-run"
EVIL = "<script>alert('x')</script>"
PROGRESS = [(2, 10, 250.0), (2, 20, 125.5)]  # (epoch, samples, tokens/s) of the bound miners
HELDOUT = {1: 6.25, 2: 5.5}
WEIGHTS = [0.25, 0.75]  # the validator's weights for uids 0 and 1


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96,
                                      n_positions=32))


def _eval(epoch: int) -> dict:
    prev = epoch - 1 if epoch > 1 else None
    return {"version": 1, "epoch": epoch, "tag": f"epoch-{epoch}",
            "heldout_loss": HELDOUT[epoch], "perplexity": float(torch.tensor(HELDOUT[epoch]).exp()),
            "tokens": 4096, "batches": 8, "previous_epoch": prev,
            "previous_loss": None if prev is None else HELDOUT[prev],
            "win_fraction": None if prev is None else 0.875,
            "delta": None if prev is None else HELDOUT[epoch] - HELDOUT[prev],
            "flagged": False, "threshold": 0.1, "seconds": 1.5}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    chain = LocalChain(tmp / "chain.sqlite", netuid=1, block_time=0.5)
    boot = start_dht(DHTConfig(), run_id=RUN)
    nodes = [boot]
    try:
        nodes += [start_dht(DHTConfig(), run_id=RUN, initial_peers=visible_maddrs(boot))
                  for _ in range(3)]
        yield _record(nodes, chain, tmp)
    finally:
        for node in reversed(nodes):
            node.shutdown()
        chain.close()


def _record(nodes, chain: LocalChain, tmp: Path) -> dict:
    miners, forger = nodes[1:3], nodes[3]
    peers = [str(node.peer_id) for node in miners]
    hotkeys = []
    for i, node in enumerate(miners):
        wallet = create_wallet(tmp / "wallets", f"miner{i}")
        assert chain.register(wallet) == i
        assert chain.bind_peer_id(wallet, peers[i], record_key_id(node.record_subkey)).success
        hotkeys.append(wallet.hotkey.ss58_address)
    validator = create_wallet(tmp / "wallets", "validator")
    assert chain.register(validator) == 2
    chain.add_stake(validator.hotkey.ss58_address, 10.0)
    assert chain.set_weights(validator, [0, 1], WEIGHTS).success
    assert chain.register_hotkey(EVIL, "coldkey") == 3  # the devnet registers any string
    chain.add_stake(EVIL, 2.0)

    store = LocalStore(tmp / "checkpoints")
    for epoch in (1, 2):
        store.push(epoch, _model(), None, {"participants": peers, "train_loss": 7.0 - epoch})
        store.write_eval(epoch, _eval(epoch))

    work = tmp / "work"
    for i, peer in enumerate(peers):
        rows = [{"epoch": e, "uid": i, "peer_id": peer, "loss": 7.0 - e + 0.1 * i,
                 "samples": 8 * (i + 1), "participants": peers, "auxiliaries": [],
                 "allreduce_seconds": 0.5 * (i + 1), "bytes_sent": 1_000_000}
                for e in (1, 2)]
        (work / "miners" / f"m{i}").mkdir(parents=True)
        (work / "miners" / f"m{i}" / "epochs.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    current = EpochRecord(epoch=1)
    current.add_allreduce(participants=[0, 1], drift={}, observed=True, consensus_checked=True,
                          transfers={0: PeerTransfer(bytes_received=2_000_000, seconds=0.5,
                                                     lag=0.125), 1: None})
    state = ValidatorState(ema={0: 0.4, 1: 0.6}, last_scores={0: 0.3, 1: 0.7},
                           components={0: {"gradient": 0.9, "steps": 0.5, "bandwidth": 0.2},
                                       1: {"gradient": 0.8, "steps": 1.0, "bandwidth": 0.0}},
                           last_epoch=0, current=current, last_weights_block=3,
                           rounds={"train": 4, "allreduce": 1})
    (work / "validators" / "v0").mkdir(parents=True)
    (work / "validators" / "v0" / "validator-v0.json").write_text(json.dumps(state.to_json()))

    for node, hotkey, (epoch, samples, tps) in zip(miners, hotkeys, PROGRESS, strict=True):
        assert ProgressReporter(dht=node, hotkey=hotkey).report(
            epoch=epoch, samples=samples, tokens_per_second=tps)
    assert ProgressReporter(dht=forger, hotkey=hotkeys[0]).report(  # signed, never bound
        epoch=2, samples=10**6, tokens_per_second=1e9)
    flags = ["--run_id", RUN, "--target_batch_size", "64", "--netuid", "1",
             "--localchain.path", str(tmp / "chain.sqlite"), "--store.dir",
             str(tmp / "checkpoints"), "--workdir", str(work)]
    return dict(nodes=nodes, miners=miners, forger=forger, peers=peers, hotkeys=hotkeys,
                flags=flags, tmp=tmp)


def _snapshot(recorded, run_id: str = RUN):
    args = parse_args(["--initial_peers", "x", *recorded["flags"]])
    sources = open_sources(args.config, max_samples=64, workdirs=args.workdir)
    try:
        return read_snapshot(recorded["nodes"][0], sources, run_id=run_id, target_batch_size=64,
                             target_source="flag")
    finally:
        sources.chain.close()


def _inspector_json(recorded) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--initial_peers",
                           visible_maddrs(recorded["nodes"][0])[0], "--json",
                           *recorded["flags"]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(line)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class _Cells(HTMLParser):
    """Every table row as (its attributes, {data-k of each cell: the cell's text})."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict, dict]] = []
        self._key: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append((dict(attrs), {}))
        elif tag == "td":
            self._key = dict(attrs).get("data-k")
            self.rows[-1][1][self._key] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self._key = None

    def handle_data(self, data):
        if self._key is not None:
            self.rows[-1][1][self._key] += data


def _rows(html: str, attr: str | None = None, key: str | None = None) -> list[tuple[dict, dict]]:
    parser = _Cells()
    parser.feed(html)
    return [(a, c) for a, c in parser.rows
            if (attr is None or attr in a) and (key is None or key in c)]


def _assert_html_matches(html: str, state: dict) -> None:
    """The numbers the page shows are those of the inspector's ``--json``."""
    assert re.search(r'id="global-epoch">(\d+)<', html).group(1) == str(state["global_epoch"])
    assert re.search(r'id="peer-count">(\d+)<', html).group(1) == str(len(state["peers"]))
    shown = {a["data-peer"]: c for a, c in _rows(html, "data-peer")}
    assert set(shown) == {p["peer_id"] for p in state["peers"]}
    for p in state["peers"]:
        cells = shown[p["peer_id"]]
        assert (cells["uid"], cells["hotkey"], cells["role"], cells["epoch"], cells["samples"],
                cells["tok/s"]) == (str(p["uid"]), p["hotkey"], p["role"], str(p["epoch"]),
                                    str(p["samples"]), f"{p['tokens_per_second']:.1f}")
        assert cells["train loss"] == f"{p['train_loss']:.4f}"
    apart = {a["data-apart"] for a, _ in _rows(html, "data-apart")}
    assert apart == {p["peer_id"] for p in state["unbound"] + state["implausible"]}
    tags = {c["tag"]: c for _, c in _rows(html, key="held-out loss")}
    for c in state["checkpoints"]:
        assert tags[c["tag"]]["held-out loss"] == f"{c['heldout_loss']:.4f}"
        assert tags[c["tag"]]["train loss"] == f"{c['train_loss']:.4f}"
    weights = {c["uid"]: c["weight on chain"] for _, c in _rows(html, key="weight on chain")}
    assert weights == {uid: f"{w:.3f}" for uid, w in state["weights"].items()}
    rounds = {c["epoch"]: c for _, c in _rows(html, key="per sender")}
    for r in state["rounds"]:
        assert rounds[str(r["epoch"])]["seconds"] == f"{r['seconds']:.2f}"
    assert "<svg" in html and 'data-series="held-out"' in html


@pytest.mark.multiprocess
def test_snapshot_of_the_recorded_swarm(recorded):
    s = _snapshot(recorded)
    assert (s.global_epoch, s.samples_accumulated, s.latest_checkpoint) == (2, 30, 2)
    assert sorted((p.uid, p.hotkey, p.role, p.epoch, p.samples, p.tokens_per_second)
                  for p in s.peers) == [(i, recorded["hotkeys"][i], "miner", *PROGRESS[i])
                                        for i in (0, 1)]
    assert {p.uid: p.train_loss for p in s.peers} == pytest.approx({0: 5.0, 1: 5.1})
    (forged,) = s.unbound
    assert (forged.peer_id, forged.uid, forged.role) == (str(recorded["forger"].peer_id), None,
                                                         "unbound")
    assert [(c.tag, c.heldout_loss, c.win_fraction, c.participants) for c in s.checkpoints] == [
        ("epoch-1", 6.25, None, (0, 1)), ("epoch-2", 5.5, 0.875, (0, 1))]
    first, last = s.rounds
    assert (first.epoch, first.source, first.seconds, first.samples) == (0, "miners", 1.0, 24)
    assert [(x.uid, x.mb_per_second) for x in first.senders] == [(0, 2.0), (1, 1.0)]
    assert (last.epoch, last.source, last.participants, last.failed) == (1, "validator", (0, 1),
                                                                        (1,))
    assert [(x.uid, x.mb_per_second, x.lag, x.failed) for x in last.senders] == [
        (0, 4.0, 0.125, False), (1, None, None, True)]
    assert s.weights == pytest.approx({0: 0.25, 1: 0.75})
    assert {v.hotkey for v in s.validators} == {EVIL, s.validators[0].hotkey}
    assert [(r.uid, r.total, r.components["steps"]) for r in s.scores] == [(0, 0.4, 0.5),
                                                                           (1, 0.6, 1.0)]
    (vs,) = s.validator_states
    assert (vs.name, vs.last_scored_epoch, vs.collecting_epoch, vs.last_weights_block) == (
        "v0", 0, 1, 3)
    assert s.miner_loss == pytest.approx({1: 6.05, 2: 5.05})


@pytest.mark.multiprocess
def test_served_page_shows_what_the_inspector_prints(recorded):
    state = _inspector_json(recorded)
    page = SwarmPage(refresh_interval=0.5)
    server = serve_page(page, port=0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _get(base + "/api/snapshot")[0] == 503  # nothing read yet: said, not faked
        assert "waiting for the first read" in _get(base + "/")[1]
        page.update(_snapshot(recorded))
        status, body = _get(base + "/api/snapshot")
        assert status == 200
        served = json.loads(body)
        for key in ("global_epoch", "samples_accumulated", "checkpoints", "rounds", "weights",
                    "scores", "validators", "validator_states", "miner_loss", "run_id"):
            assert served[key] == state[key], key
        strip = ("age_seconds",)
        assert [{k: v for k, v in p.items() if k not in strip} for p in served["peers"]] == [
            {k: v for k, v in p.items() if k not in strip} for p in state["peers"]]
        for path in ("/", "/panel"):
            status, html = _get(base + path)
            assert status == 200
            _assert_html_matches(html, state)
        history = json.loads(_get(base + "/api/history")[1])
        assert [h["global_epoch"] for h in history] == [2]
        assert _get(base + "/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.multiprocess
def test_strings_from_the_network_are_escaped(recorded):
    s = _snapshot(recorded, run_id=EVIL)  # a real read: no records for this run id
    assert any(EVIL in n for n in s.notes) and any(v.hotkey == EVIL for v in s.validators)
    html = render_page(s, [], [])
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)" in html
    assert html.count("<script>") == 1  # the page's own refresh script


def test_rendered_strings_are_escaped_everywhere():
    evil_peer = PeerProgress(peer_id=EVIL, hotkey=EVIL, epoch=1, samples=1,
                             tokens_per_second=1.0, age_seconds=0.0)
    state = SwarmState(global_epoch=1, target_batch_size=4, samples_accumulated=1,
                       peers=[evil_peer], unbound=[evil_peer])
    chain = ChainView(netuid=1, neurons=(NeuronView(uid=0, hotkey=EVIL, stake=5.0,
                                                     validator_permit=True),),
                      weights={0: {0: 1.0}})
    local = LocalView(miner_rows=({"epoch": 1, "peer_id": EVIL, "loss": 2.0, "samples": 1,
                                   "participants": [EVIL], "allreduce_seconds": 1.0,
                                   "bytes_sent": 10},),
                      validator_states={EVIL: {"ema": {"0": 1.0}, "rounds": {EVIL: 1}}},
                      searched=True)
    s = build_snapshot(state, chain=chain, store=StoreView(), local=local, run_id=EVIL, now=1.0)
    html = render_page(s, [], list(s.rounds))
    assert "<script>alert" not in html and html.count("<script>") == 1
    assert html.count("&lt;script&gt;") >= 5


def test_charts_are_svg_and_drop_what_cannot_be_drawn():
    svg = line_chart({"held-out": [(1, 6.0), (2, float("nan")), (3, 5.0)], EVIL: []},
                     title=EVIL, x_label="epoch", y_label="loss")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 2 and "<script>" not in svg
    assert "no data yet" in line_chart({"a": []}, title="t", x_label="x", y_label="y")
    bars = bar_chart({"uid 0": 0.25, "uid 1": 0.75}, title="weights", y_label="w")
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', bars)]
    assert heights[1] == pytest.approx(3 * heights[0])


def _start_server(recorded, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--initial_peers",
                             visible_maddrs(recorded["nodes"][0])[0], *recorded["flags"],
                             "--serve", "0", "--watch", "0.5", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.match(r"swarm page: (http://127\.0\.0\.1:\d+)/", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"no page address: {line!r} {proc.stderr.read()}")
    return proc, match.group(1)


def _wait_snapshot(base: str, timeout: float = 60.0, after: float | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _get(base + "/api/snapshot")
        if status == 200 and (after is None or json.loads(body)["time"] > after):
            return json.loads(body)
        time.sleep(0.2)
    raise AssertionError(f"no snapshot from {base} within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # the inspector stops like Ctrl+C
    try:
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="no `chromium` on PATH (Debian's chromium package): the page is not "
                           "checked in a real browser here")
@pytest.mark.multiprocess
def test_page_in_headless_chromium(recorded, tmp_path):
    state = _inspector_json(recorded)
    proc, base = _start_server(recorded)
    try:
        _wait_snapshot(base)
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
             "--dump-dom", base + "/"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
        assert dom.returncode == 0, dom.stderr
        _assert_html_matches(dom.stdout, state)
    finally:
        _stop(proc)


@pytest.mark.multiprocess
def test_a_taken_port_exits_2_with_the_fix(recorded):
    page = SwarmPage()
    server = serve_page(page, port=0)
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), "--initial_peers",
                               visible_maddrs(recorded["nodes"][0])[0], *recorded["flags"],
                               "--serve", str(server.server_address[1])],
                              capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"inspect_dht: error: --serve {server.server_address[1]}:" in proc.stderr
    assert "0 for any free one" in proc.stderr


@pytest.mark.multiprocess
def test_serve_flag_serves_a_page_that_updates_itself(recorded):
    """Last in the module: it changes a miner's record."""
    proc, base = _start_server(recorded)
    try:
        first = _wait_snapshot(base)
        assert {p["samples"] for p in first["peers"]} == {10, 20}
        _assert_html_matches(_get(base + "/")[1], first)
        assert ProgressReporter(dht=recorded["miners"][0], hotkey=recorded["hotkeys"][0]).report(
            epoch=2, samples=15, tokens_per_second=300.0)
        deadline = time.monotonic() + 60
        while True:
            now = _wait_snapshot(base, after=first["time"])
            if {p["samples"] for p in now["peers"]} == {15, 20} or time.monotonic() > deadline:
                break
            first = now
        assert {p["samples"] for p in now["peers"]} == {15, 20}
        status, panel = _get(base + "/panel")
        assert status == 200 and len(json.loads(_get(base + "/api/history")[1])) >= 2
        assert "15" in {c["samples"] for _, c in _rows(panel, "data-peer")}
    finally:
        _stop(proc)
