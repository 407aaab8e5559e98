"""Checkpoint stores: local directory store on a temp dir, Hub store against a local fake Hub.

The fake Hub (a ``http.server`` on 127.0.0.1) implements the handful of Hub routes the store
uses (create repo, preupload, commit, tag, refs, resolve) and can be told to answer the next N
requests of a route with an error status, so retries, backoff and auth errors run through the
real ``huggingface_hub`` client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from template.checkpoints import (
    CheckpointConflictError,
    CheckpointError,
    CorruptCheckpointError,
    HubStore,
    LocalStore,
    ManifestError,
    MissingCheckpointError,
    StoreAuthError,
    StoreUnavailableError,
    build_store,
    epoch_of,
    tag_for,
)
from template.checkpoints import base as ckpt_base
from template.config import ConfigError, StoreConfig
from template.model import fingerprint, load_state_into, parameter_hash


def _small_model(seed: int) -> GPT2LMHeadModel:
    """A GPT-2 far smaller than any preset: the stores do not care about the shape."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96, n_positions=32,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def tokenizer():
    from template.data import load_tokenizer

    return load_tokenizer(offline=True)


# ------------------------------------------------------------------ tags


def test_tags():
    assert tag_for(0) == "epoch-0" and tag_for(12) == "epoch-12"
    assert epoch_of("epoch-12") == 12
    assert epoch_of("epoch-012") is None and epoch_of("epoch-x") is None
    assert epoch_of(".tmp-epoch-3-abc") is None
    for bad in (-1, 1.0, True, "3"):
        with pytest.raises(ValueError):
            tag_for(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ local store


def test_local_round_trip_with_tokenizer_and_optimizer(tmp_path, tokenizer):
    model = _small_model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.arange(8)[None], labels=torch.arange(8)[None]).loss.backward()
    opt.step()
    store = LocalStore(tmp_path)
    assert store.tags() == [] and store.latest_epoch() is None
    tag = store.push(3, model, tokenizer, {"loss": 2.5, "peers": ["a", "b"]},
                     optimizer_state=opt.state_dict())
    assert tag == "epoch-3"

    ckpt = store.pull(3)
    assert ckpt.epoch == 3 and ckpt.metadata == {"loss": 2.5, "peers": ["a", "b"]}
    assert ckpt.config["n_embd"] == 16
    assert parameter_hash(ckpt.state_dict) == parameter_hash(model)
    assert ckpt.manifest["parameter_hash"] == parameter_hash(model)
    assert ckpt.manifest["fingerprint"] == fingerprint(model)
    assert set(ckpt.manifest["files"]) >= {"model.safetensors", "config.json", "optimizer.pt",
                                           "tokenizer.json"}
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(ckpt.optimizer_state)
    assert restored.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]

    fresh = _small_model(1)
    load_state_into(fresh, ckpt.state_dict)
    assert parameter_hash(fresh) == parameter_hash(model)
    # The folder is a plain transformers checkpoint.
    again = GPT2LMHeadModel.from_pretrained(ckpt.directory)
    assert parameter_hash(again) == parameter_hash(model)


def test_pushed_checkpoint_carries_a_model_card_in_its_manifest(tmp_path, tokenizer):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    model = _small_model(0)
    store = LocalStore(tmp_path)
    metadata = {"run_id": "fineweb-gpt2", "train_loss": 3.25, "participants": ["a", "b"]}
    store.push(4, model, tokenizer, metadata)
    ckpt = store.pull(4)
    card_path = ckpt.directory / "README.md"
    card = ModelCard.load(card_path)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["datasets"] == ["HuggingFaceFW/fineweb"]
    assert {"gpt2", "bittensor", "hivemind"} <= set(data["tags"])
    assert "| epoch | 4 |" in card.text and "`epoch-4`" in card.text
    assert "| run id | `fineweb-gpt2` |" in card.text
    assert "| training loss | 3.2500 |" in card.text and "| miners in the round | 2 |" in card.text
    assert "| held-out loss |" not in card.text  # not passed: no row, only the pointer to eval.json
    assert "eval.json" in card.text
    entry = ckpt.manifest["files"]["README.md"]
    assert entry["sha256"] == hashlib.sha256(card_path.read_bytes()).hexdigest()
    again = AutoModelForCausalLM.from_pretrained(ckpt.directory)
    assert parameter_hash(again) == parameter_hash(model)

    store.push(5, model, None, {})  # no metadata: the card still says what the weights are
    bare = (store.pull(5).directory / "README.md").read_text()
    assert "library_name: transformers" in bare and "| epoch | 5 |" in bare
    assert "run id" not in bare and "training loss" not in bare


def test_local_tags_sorted_numerically_and_latest(tmp_path):
    store = LocalStore(tmp_path)
    model = _small_model(0)
    for epoch in (10, 2, 9):
        store.push(epoch, model, None, {})
    (tmp_path / "notes").mkdir()
    (tmp_path / "epoch-x").mkdir()
    assert store.tags() == ["epoch-2", "epoch-9", "epoch-10"]
    assert store.latest_epoch() == 10
    with pytest.raises(MissingCheckpointError, match="epoch-4.*have: epoch-2, epoch-9"):
        store.pull(4)


def test_local_push_same_weights_is_idempotent_other_weights_conflict(tmp_path):
    store = LocalStore(tmp_path)
    model = _small_model(0)
    store.push(1, model, None, {"n": 1})
    assert store.push(1, model, None, {"n": 2}) == "epoch-1"
    assert store.pull(1).metadata == {"n": 1}  # first writer wins
    with pytest.raises(CheckpointConflictError) as info:
        store.push(1, _small_model(1), None, {})
    assert info.value.existing_hash == parameter_hash(model)


def test_local_crash_mid_push_leaves_nothing_visible(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    model = _small_model(0)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_base.torch, "save", crash)  # optimizer.pt is written mid-push
    with pytest.raises(OSError, match="simulated"):
        store.push(5, model, None, {}, optimizer_state={"state": {}, "param_groups": []})
    assert store.tags() == []
    assert list(tmp_path.iterdir()) == []  # the temp folder was removed too
    monkeypatch.undo()
    assert store.push(5, model, None, {}) == "epoch-5"
    assert store.latest_epoch() == 5


def test_local_killed_push_leftovers_are_ignored_then_cleaned(tmp_path):
    leftover = tmp_path / ".tmp-epoch-7-abcd"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    store = LocalStore(tmp_path)
    assert leftover.exists()  # fresh: may be a live push of another process
    assert store.tags() == []
    store.stale_after = 0.0
    time.sleep(0.01)
    assert store.clean_stale() == [leftover.name]
    assert not leftover.exists()


def test_local_corruption_is_rejected_naming_the_file(tmp_path):
    store = LocalStore(tmp_path)
    store.push(2, _small_model(0), None, {})
    weights = tmp_path / "epoch-2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="model.safetensors: sha256") as info:
        store.pull(2)
    assert info.value.filename == "model.safetensors"

    (tmp_path / "epoch-2" / "config.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="config.json"):
        store.pull(2)


def test_local_bad_manifest_and_forged_weights(tmp_path):
    store = LocalStore(tmp_path)
    store.push(0, _small_model(0), None, {})
    manifest_path = tmp_path / "epoch-0" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())

    manifest_path.write_text("{not json")
    with pytest.raises(ManifestError, match="not JSON"):
        store.pull(0)
    manifest_path.write_text(json.dumps({**manifest, "epoch": 1}))
    with pytest.raises(ManifestError, match="epoch"):
        store.pull(0)
    forged = {**manifest, "files": {**manifest["files"], "../x": manifest["files"]["config.json"]}}
    manifest_path.write_text(json.dumps(forged))
    with pytest.raises(ManifestError, match="bad file entry"):
        store.pull(0)

    # Consistent sha256 entries for other weights: the parameter_hash check catches it.
    other = tmp_path / "other"
    other.mkdir()
    _small_model(1).save_pretrained(other)
    weights = tmp_path / "epoch-0" / "model.safetensors"
    weights.write_bytes((other / "model.safetensors").read_bytes())
    entry = {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
             "size": weights.stat().st_size}
    manifest_path.write_text(json.dumps(
        {**manifest, "files": {**manifest["files"], "model.safetensors": entry}}))
    with pytest.raises(CorruptCheckpointError, match="parameter_hash"):
        store.pull(0)


def test_local_rejects_unserialisable_metadata(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(ManifestError, match="metadata"):
        store.push(0, _small_model(0), None, {"when": object()})
    with pytest.raises(ManifestError, match="metadata"):
        store.push(0, _small_model(0), None, {"loss": float("nan")})
    assert store.tags() == []


def test_pickled_optimizer_is_refused(tmp_path):
    store = LocalStore(tmp_path)
    store.push(0, _small_model(0), None, {}, optimizer_state={"state": {}, "param_groups": []})
    folder = tmp_path / "epoch-0"
    torch.save({"state": {}, "evil": _Evil()}, folder / "optimizer.pt")  # a non-weights pickle
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "optimizer.pt").read_bytes()
    manifest["files"]["optimizer.pt"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                         "size": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptCheckpointError, match="optimizer.pt: refused by torch.load"):
        store.pull(0)


class _Evil:
    pass


# ------------------------------------------------------------------ config


def test_build_store_from_config(tmp_path, monkeypatch):
    store = build_store(StoreConfig(kind="local", dir=str(tmp_path / "s")))
    assert isinstance(store, LocalStore) and (tmp_path / "s").is_dir()
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    hub = build_store(StoreConfig(kind="hub", repo_id="org/run", retries=5, dir=str(tmp_path)))
    assert isinstance(hub, HubStore) and hub.retries == 5 and hub.repo_id == "org/run"
    with pytest.raises(ConfigError, match="--store.repo_id"):
        StoreConfig(kind="hub", repo_id="")
    with pytest.raises(ConfigError, match="--store.kind"):
        StoreConfig(kind="s3")
    with pytest.raises(ValueError, match="--store.repo_id"):
        HubStore("no-slash")
    with pytest.raises(ValueError, match="--store.retries"):
        HubStore("org/run", retries=0)


# ------------------------------------------------------------------ fake Hub


class FakeHub(ThreadingHTTPServer):
    """The Hub routes HubStore uses, in memory. ``fail(route, [500, 500])`` answers the next
    two requests of ``route`` with those statuses; ``counts[route]`` counts every request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.repos: dict[str, dict] = {}
        self.failures: dict[str, list[int]] = {}
        self.counts: dict[str, int] = {}
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"

    def fail(self, route: str, statuses: list[int]) -> None:
        self.failures[route] = list(statuses)

    def next_failure(self, route: str) -> int | None:
        with self.lock:
            self.counts[route] = self.counts.get(route, 0) + 1
            pending = self.failures.get(route)
            return pending.pop(0) if pending else None


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: object = None, headers: dict | None = None,
              head: bool = False) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self) -> tuple[str, list[str]]:
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["api", "repos"]:
            return "create_repo", parts
        if parts == ["api", "validate-yaml"]:  # huggingface_hub checks a README.md's front matter
            return "validate_yaml", parts
        if parts[:2] == ["api", "models"] and len(parts) >= 5:
            return parts[4], parts  # preupload | commit | tag | refs
        if len(parts) >= 5 and parts[2] == "resolve":
            return "resolve", parts
        return "unknown", parts

    def do_POST(self):
        self._handle()

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle(head=True)

    def _handle(self, head: bool = False) -> None:
        route, parts = self._route()
        status = self.server.next_failure(route)
        body = self._body() if self.command == "POST" else b""
        if status is not None:
            self._send(status, {"error": f"injected {status}"}, head=head)
            return
        hub = self.server
        if route == "validate_yaml":
            import yaml

            content = json.loads(body)["content"]
            ok = content.startswith("---\n") and isinstance(
                yaml.safe_load(content.split("---\n")[1]), dict)
            return self._send(200 if ok else 400, {} if ok else {"error": "bad YAML metadata"})
        if route == "create_repo":
            payload = json.loads(body)
            repo = f"{payload.get('organization') or 'user'}/{payload['name']}"
            with hub.lock:
                hub.repos.setdefault(repo, {"commits": {}, "tags": {}, "head": None})
            return self._send(200, {"url": f"{hub.endpoint}/{repo}"})
        repo_id = "/".join(parts[2:4]) if parts[0] == "api" else "/".join(parts[0:2])
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self._send(404, {"error": "repo"}, {"X-Error-Code": "RepoNotFound"}, head)
        if route == "preupload":
            files = json.loads(body)["files"]
            return self._send(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in files]})
        if route == "commit":
            return self._commit(repo, body)
        if route == "tag":
            tag = json.loads(body)["tag"]
            if tag in repo["tags"]:
                return self._send(409, {"error": "tag exists"})
            repo["tags"][tag] = repo["head"] if parts[5] == "main" else parts[5]
            return self._send(200, {})
        if route == "refs":
            refs = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c}
                    for t, c in repo["tags"].items()]
            return self._send(200, {"branches": [], "converts": [], "tags": refs})
        if route == "resolve":
            return self._resolve(repo, parts[3], "/".join(parts[4:]), head)
        return self._send(404, {"error": f"unknown route {self.path}"})

    def _commit(self, repo: dict, body: bytes) -> None:
        files = dict(repo["commits"].get(repo["head"], {}))
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        oid = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        repo["commits"][oid] = files
        repo["head"] = oid
        self._send(200, {"commitOid": oid, "commitUrl": f"{self.server.endpoint}/c/{oid}",
                         "success": True})

    def _resolve(self, repo: dict, revision: str, filename: str, head: bool) -> None:
        oid = repo["tags"].get(revision, revision if revision in repo["commits"] else None)
        if oid is None:
            return self._send(404, {"error": "rev"}, {"X-Error-Code": "RevisionNotFound"}, head)
        data = repo["commits"][oid].get(filename)
        if data is None:
            return self._send(404, {"error": "entry"}, {"X-Error-Code": "EntryNotFound"}, head)
        etag = hashlib.sha256(data).hexdigest()
        self._send(200, data, {"X-Repo-Commit": oid, "ETag": f'"{etag}"'}, head)


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _hub_store(hub: FakeHub, tmp_path: Path, **kwargs) -> tuple[HubStore, list[float]]:
    sleeps: list[float] = []
    options = {"token": "hf_fake", "endpoint": hub.endpoint, "retries": 3, "backoff": 0.5,
               "cache_dir": tmp_path / "cache", "sleep": sleeps.append, **kwargs}
    return HubStore("org/run", **options), sleeps


def test_hub_round_trip_tags_and_verification(hub, tmp_path):
    store, sleeps = _hub_store(hub, tmp_path)
    assert store.tags() == [] and store.latest_epoch() is None
    model = _small_model(0)
    assert store.push(0, model, None, {"loss": 4.0}) == "epoch-0"
    assert store.push(1, _small_model(1), None, {"loss": 3.0}) == "epoch-1"
    assert store.tags() == ["epoch-0", "epoch-1"] and store.latest_epoch() == 1
    assert hub.counts["commit"] == 2 and hub.counts["tag"] == 2
    assert len(hub.repos["org/run"]["commits"]) == 2

    ckpt = store.pull(0)  # epoch-0's tag still points at the first commit
    assert parameter_hash(ckpt.state_dict) == parameter_hash(model)
    assert ckpt.metadata == {"loss": 4.0}
    assert "README.md" in ckpt.manifest["files"]  # the repo page (front matter checked above)
    assert "| epoch | 0 |" in (ckpt.directory / "README.md").read_text()
    assert store.push(0, model, None, {}) == "epoch-0"  # same weights: no-op
    with pytest.raises(CheckpointConflictError):
        store.push(0, _small_model(2), None, {})
    with pytest.raises(MissingCheckpointError, match="epoch-7"):
        store.pull(7)
    assert sleeps == []

    # A damaged file on the Hub side is caught by the manifest check, after one re-download.
    commit = hub.repos["org/run"]["tags"]["epoch-1"]
    hub.repos["org/run"]["commits"][commit]["model.safetensors"] += b"\0"
    with pytest.raises(CorruptCheckpointError, match="model.safetensors"):
        store.pull(1)


def test_hub_retries_transient_errors_with_bounded_backoff(hub, tmp_path):
    store, sleeps = _hub_store(hub, tmp_path, retries=4, backoff=0.5, max_backoff=0.75)
    hub.fail("create_repo", [500, 503, 502])
    assert store.push(0, _small_model(0), None, {}) == "epoch-0"
    assert hub.counts["create_repo"] == 4
    assert sleeps == [0.5, 0.75, 0.75]  # 0.5 * 2**k, capped at max_backoff
    assert store.tags() == ["epoch-0"]


def test_hub_gives_up_after_retries(hub, tmp_path):
    store, sleeps = _hub_store(hub, tmp_path, retries=3, backoff=0.25)
    hub.fail("create_repo", [500] * 10)
    with pytest.raises(StoreUnavailableError, match="create repo on org/run failed after 3"):
        store.push(0, _small_model(0), None, {})
    assert hub.counts["create_repo"] == 3 and sleeps == [0.25, 0.5]
    hub.fail("tag", [])
    assert store.tags() == []  # nothing was tagged


def test_hub_backoff_really_waits(hub, tmp_path):
    store, _ = _hub_store(hub, tmp_path, retries=3, backoff=0.1, sleep=time.sleep)
    hub.fail("refs", [502, 502])
    hub.repos["org/run"] = {"commits": {}, "tags": {}, "head": None}
    start = time.monotonic()
    assert store.tags() == []
    elapsed = time.monotonic() - start
    assert hub.counts["refs"] == 3
    assert 0.3 <= elapsed < 3.0  # slept 0.1 + 0.2


@pytest.mark.parametrize(("status", "reason"), [(401, "missing or invalid"),
                                                 (403, "lacks write access")])
def test_hub_auth_errors_are_not_retried(hub, tmp_path, status, reason):
    store, sleeps = _hub_store(hub, tmp_path)
    hub.fail("create_repo", [status])
    with pytest.raises(StoreAuthError, match=f"HTTP {status}.*{reason}.*HF_TOKEN"):
        store.push(0, _small_model(0), None, {})
    assert hub.counts["create_repo"] == 1 and sleeps == []


def test_hub_other_client_errors_are_typed_and_not_retried(hub, tmp_path):
    store, sleeps = _hub_store(hub, tmp_path)
    hub.fail("commit", [422])
    with pytest.raises(CheckpointError, match="push epoch-0 to org/run"):
        store.push(0, _small_model(0), None, {})
    assert hub.counts["commit"] == 1 and sleeps == []


def test_hub_unreachable_endpoint_and_offline_mode(hub, tmp_path, monkeypatch):
    dead = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = dead.server_address[1]
    dead.server_close()  # nothing listens there any more: connection refused
    store, sleeps = _hub_store(hub, tmp_path, endpoint=f"http://127.0.0.1:{port}", retries=2)
    with pytest.raises(StoreUnavailableError, match="failed after 2 attempts"):
        store.tags()
    assert sleeps == [0.5]

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    store, sleeps = _hub_store(hub, tmp_path)
    with pytest.raises(StoreUnavailableError, match="HF_HUB_OFFLINE"):
        store.tags()
    assert sleeps == [] and "refs" not in hub.counts


# ------------------------------------------------------------------ stray tags, lying manifests


def test_local_latest_epoch_skips_stray_and_corrupt_newest(tmp_path, caplog):
    store = LocalStore(tmp_path)
    assert store.latest_epoch() is None
    store.push(3, _small_model(0), None, {})
    (tmp_path / "epoch-5").mkdir()  # a stray folder: no manifest at all
    (tmp_path / "epoch-4").mkdir()
    (tmp_path / "epoch-4" / "manifest.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="template.checkpoints.base"):
        assert store.latest_epoch() == 3
    assert "epoch-5" in caplog.text and "epoch-4" in caplog.text
    assert store.tags() == ["epoch-3", "epoch-4", "epoch-5"]  # still listed, just skipped
    assert store.pull(store.latest_epoch()).epoch == 3

    (tmp_path / "epoch-3" / "manifest.json").unlink()
    assert store.latest_epoch() is None  # no valid checkpoint left


def _rewrite_manifest(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_local_pull_recomputes_fingerprint_and_counts(tmp_path):
    store = LocalStore(tmp_path)
    model = _small_model(0)
    store.push(0, model, None, {})
    manifest_path = tmp_path / "epoch-0" / "manifest.json"
    good = json.loads(manifest_path.read_text())
    assert store.pull(0).manifest["fingerprint"] == fingerprint(model)

    # Consistent everything (files, parameter_hash), but the fingerprint of other weights.
    _rewrite_manifest(manifest_path, fingerprint=fingerprint(_small_model(1)))
    with pytest.raises(ManifestError, match="fingerprint is .* from the one recomputed"):
        store.pull(0)
    nudged = [x + 1e-3 for x in good["fingerprint"]]
    _rewrite_manifest(manifest_path, fingerprint=nudged)
    with pytest.raises(ManifestError, match="fingerprint"):
        store.pull(0)
    bad_fingerprints = [[], good["fingerprint"] + [0.0], good["fingerprint"][:-1],
                        [float("nan")] * len(good["fingerprint"]),
                        [True] * len(good["fingerprint"])]
    for bad in bad_fingerprints:
        manifest_path.write_text(json.dumps({**good, "fingerprint": bad}))
        with pytest.raises(ManifestError, match="fingerprint"):
            store.pull(0)
    manifest_path.write_text(json.dumps(good).replace(
        str(good["fingerprint"][0]), "Infinity", 1))
    with pytest.raises(ManifestError, match="fingerprint"):
        store.pull(0)

    for key, value, match in [("num_parameters", good["num_parameters"] + 1, "num_parameters"),
                              ("num_parameters", -1, "num_parameters"),
                              ("fingerprint_dims", good["fingerprint_dims"] * 2,
                               "fingerprint_dims"),
                              ("fingerprint_seed", good["fingerprint_seed"] + 1,
                               "fingerprint_seed")]:
        manifest_path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(ManifestError, match=match):
            store.pull(0)

    manifest_path.write_text(json.dumps(good))
    assert store.pull(0).epoch == 0  # the honest manifest still loads


def test_hub_latest_epoch_skips_bad_tags_and_pull_checks_fingerprint(hub, tmp_path, caplog):
    store, _ = _hub_store(hub, tmp_path)
    store.push(0, _small_model(0), None, {})
    store.push(1, _small_model(1), None, {})
    repo = hub.repos["org/run"]
    good = json.loads(repo["commits"][repo["tags"]["epoch-1"]]["manifest.json"])

    # epoch-2: a tag on a commit whose manifest claims other weights' fingerprint (files and
    # parameter_hash are consistent) -> listed as latest, but pull refuses it.
    lying = dict(repo["commits"][repo["tags"]["epoch-1"]])
    lying["manifest.json"] = json.dumps(
        {**good, "epoch": 2, "fingerprint": fingerprint(_small_model(0))}).encode()
    repo["commits"]["c" * 40] = lying
    repo["tags"]["epoch-2"] = "c" * 40
    assert store.latest_epoch() == 2
    with pytest.raises(ManifestError, match="fingerprint"):
        store.pull(2)

    # epoch-3: a stray tag on a commit without a manifest; epoch-4: a garbled manifest.
    repo["commits"]["d" * 40] = {"config.json": b"{}"}
    repo["tags"]["epoch-3"] = "d" * 40
    repo["commits"]["e" * 40] = {"manifest.json": b"{not json"}
    repo["tags"]["epoch-4"] = "e" * 40
    with caplog.at_level("WARNING", logger="template.checkpoints.base"):
        assert store.latest_epoch() == 2
    assert "epoch-3" in caplog.text and "epoch-4" in caplog.text

    del repo["tags"]["epoch-2"]
    assert store.latest_epoch() == 1
    assert store.pull(1).manifest["fingerprint"] == good["fingerprint"]


def _reference(store, peers):
    from template.config import ModelConfig
    from template.validator.reference import ReferenceModel

    return ReferenceModel(model_cfg=ModelConfig(preset="tiny"), seed=0, store=store,
                          run_id="run", peers=lambda: peers, tolerance=1e-4)


def test_reference_model_uses_the_fingerprint_of_its_loaded_weights(tmp_path):
    from template.config import ModelConfig
    from template.model import build_model

    store = LocalStore(tmp_path)
    source = build_model(ModelConfig(preset="tiny"), seed=7)
    store.push(1, source, None, {})
    reference = _reference(store, {})
    checkpoint = store.pull(1)
    # A manifest fingerprint within the pull tolerance, but not the weights' exact numbers.
    checkpoint.manifest["fingerprint"] = [x * (1 + 1e-7) for x in checkpoint.manifest[
        "fingerprint"]]
    assert reference.load(checkpoint)
    assert reference.epoch == 1
    assert list(reference.fingerprint) == fingerprint(reference.model)
    assert list(reference.fingerprint) != checkpoint.manifest["fingerprint"]


def test_reference_model_passes_over_unsigned_and_forged_checkpoints(tmp_path):
    from template.attestation import sign_push
    from template.chain.wallets import create_wallet
    from template.config import ModelConfig
    from template.model import build_model

    store = LocalStore(tmp_path / "store")
    hotkeys = {n: create_wallet(tmp_path / "wallets", n).hotkey for n in ("forger", "honest")}
    peers = {hotkeys["forger"].ss58_address: "QmForger", hotkeys["honest"].ss58_address: "QmHonest"}

    def push(model, who, candidate=False):
        store.push(2, model, None, sign_push(hotkeys[who], run_id="run", epoch=2,
                                             parameter_hash=parameter_hash(model),
                                             pusher=f"Qm{who.title()}"), candidate=candidate)

    reference = _reference(store, peers)
    forged, honest = (build_model(ModelConfig(preset="tiny"), seed=s) for s in (8, 9))
    store.push(2, forged, None, {"pusher": "QmHonest"})  # unsigned: never read
    assert not reference.ensure(2)
    push(honest, "honest", candidate=True)
    assert reference.ensure(2) and reference.fingerprint == tuple(fingerprint(honest))

    store2 = LocalStore(tmp_path / "store2")  # a signed forgery holds the tag this time
    store, reference = store2, _reference(store2, peers)
    push(forged, "forger")
    push(honest, "honest", candidate=True)
    reference.expect(2, fingerprint(honest))  # what the round's members reported
    assert reference.ensure(2) and reference.fingerprint == tuple(fingerprint(honest))
    unexpected = _reference(store2, peers)  # (a restarted validator knows no round: first signed)
    assert unexpected.ensure(2) and unexpected.fingerprint == tuple(fingerprint(forged))


# ------------------------------------------------------------------ candidates


@pytest.mark.parametrize("kind", ["local", "hub"])
def test_a_candidate_stores_weights_that_lost_the_race_for_the_tag(kind, hub, tmp_path):
    store = LocalStore(tmp_path / "store") if kind == "local" else _hub_store(hub, tmp_path)[0]
    forged, honest = _small_model(0), _small_model(1)
    assert store.push(3, forged, None, {"who": "first"}) == "epoch-3"
    with pytest.raises(CheckpointConflictError):
        store.push(3, honest, None, {"who": "second"})
    tag = store.push(3, honest, None, {"who": "second"}, candidate=True)
    assert tag == f"epoch-3-{parameter_hash(honest)[:12]}"
    assert store.push(3, honest, None, {}, candidate=True) == tag  # same weights: no-op
    assert store.tags() == ["epoch-3"] and store.latest_epoch() == 3  # candidates never count
    assert store.candidates(3) == [tag] and store.candidates(2) == []
    pulled = store.pull(3, tag=tag)
    assert parameter_hash(pulled.state_dict) == parameter_hash(honest)
    assert pulled.metadata == {"who": "second"} and pulled.manifest["tag"] == tag
    assert store.read_manifest(3, tag=tag)["parameter_hash"] == parameter_hash(honest)
    assert parameter_hash(store.pull(3).state_dict) == parameter_hash(forged)
    with pytest.raises(MissingCheckpointError, match="not a checkpoint tag of epoch 4"):
        store.pull(4, tag=tag)
    with pytest.raises(MissingCheckpointError):
        store.pull(3, tag="epoch-3-000000000000")
