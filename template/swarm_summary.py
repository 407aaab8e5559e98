"""The local swarm's summary: what each epoch produced, who agreed, and who earned what.

Built from what the run left on disk (each miner's `epochs.jsonl`, the checkpoint store's
manifests, the validators' persisted scores) and from the local chain (weights, incentive), so
it describes the run as any observer could check it afterwards.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from template.attestation import PushRejected, hotkey_peers, resolve, within
from template.chain.local import LocalChain
from template.checkpoints import CheckpointError, LocalStore
from template.consensus import consensus_tolerance
from template.localnet import RUN_ID, epoch_rows
from template.validator.allreduce_round import median_fingerprint


def build_summary(*, workdir: Path, chain: LocalChain, uids: dict[str, int], miners: list[str],
                  cheaters: dict[str, str], epochs: int, ok: bool,
                  compression: str = "none") -> dict[str, Any]:
    """The `--summary` JSON object (see docs/local-devnet.md for every key)."""
    store = LocalStore(workdir / "checkpoints")
    signers = hotkey_peers(chain)
    tolerance = consensus_tolerance(compression)
    bindings = chain.peer_bindings()
    uid_of_peer = {peer: uid for uid, peer in bindings.items()}
    lines = {name: epoch_rows(workdir / "miners" / name)
             for name in [*miners, *cheaters]}
    expected = {uids[name] for name in [*miners, *cheaters]}
    out_epochs = []
    for epoch in range(1, epochs + 1):
        rows = {uids[name]: row for name, rows in lines.items() for row in rows
                if row["epoch"] == epoch}
        honest = [rows[uids[m]] for m in miners if uids[m] in rows]
        members = {p for row in rows.values() for p in row["participants"]
                   if p not in row.get("auxiliaries", [])}
        participants = sorted(uid_of_peer[p] for p in members if p in uid_of_peer)
        canonical = _canonical(store, epoch, peers=signers, tolerance=tolerance,
                               reported=[r["fingerprint"] for r in rows.values()])
        out_epochs.append({
            "epoch": epoch,
            "loss": statistics.fmean(r["loss"] for r in honest) if honest else None,
            "fingerprints": {str(uid): row["fingerprint"] for uid, row in sorted(rows.items())},
            "canonical_fingerprint": canonical["fingerprint"],
            "fingerprint_tolerance": tolerance,
            "participants": participants,
            "failed": sorted(expected - set(participants)),
            "allreduce_seconds": max((r["allreduce_seconds"] for r in honest), default=None),
            "checkpoint_tag": canonical["tag"],
            "rejected_checkpoints": canonical["rejected"],
        })
    phases = miner_phases([row for m in miners for row in lines[m]])
    validator = _validator_state(workdir)
    history = validator.get("history", {})
    for entry in out_epochs:  # the round of epoch-N's step was scored as epoch N-1
        entry["round_scores"] = history.get(str(entry["epoch"] - 1), {})
    weights = _latest_weights(chain)
    return {
        "ok": ok,
        "epochs": out_epochs,
        "scores": _scores(validator),
        "weights": {str(uid): w for uid, w in sorted(weights.items())},
        "incentive": {str(uid): v for uid, v in sorted(chain.incentive().items())},
        "cheaters": {str(uids[name]): kind for name, kind in cheaters.items()},
        "roles": {str(uid): name for name, uid in sorted(uids.items(), key=lambda kv: kv[1])},
        "store": str(store.root),
        "phases": phases,
    }


def _canonical(store: LocalStore, epoch: int, *, peers: dict[str, str], tolerance: float,
               reported: list[list[float]]) -> dict[str, Any]:
    """The epoch's canonical checkpoint as a validator picks it: signed by a bound pusher and in
    line with the median of what the miners reported; the tags passed over, with why."""
    rejected: dict[str, str] = {}

    def note(err: PushRejected) -> None:
        rejected[err.tag] = err.reason

    agrees = within(median_fingerprint(reported), tolerance) if reported else None
    try:
        found = resolve(store, epoch, run_id=RUN_ID, peers=peers, agrees=agrees, on_reject=note)
    except CheckpointError:
        return {"fingerprint": None, "tag": None, "rejected": rejected}
    return {"fingerprint": found.fingerprint, "tag": found.tag, "rejected": rejected}


def miner_phases(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Where honest miners' epochs went: median seconds training (local work), waiting for the
    round, and in the round (matchmaking + all-reduce), and ``compute_share``, the training
    seconds over the three together, summed over every miner-epoch."""
    keys = ("train_seconds", "wait_seconds", "round_seconds")
    timed = [r for r in rows if all(isinstance(r.get(k), (int, float)) for k in keys)]
    if not timed:
        return {"compute_share": None, **dict.fromkeys(keys)}
    total = sum(r[k] for r in timed for k in keys)
    return {"compute_share": sum(r["train_seconds"] for r in timed) / total if total else None,
            **{k: statistics.median(r[k] for r in timed) for k in keys}}


def _latest_weights(chain: LocalChain) -> dict[int, float]:
    """Stake-weighted mean of every validator's last weights (one validator: its weights)."""
    graph = chain.metagraph()
    total: dict[int, float] = {}
    stake_sum = 0.0
    for validator, row in chain.weights().items():
        neuron = graph.neuron(validator)
        stake = neuron.stake if neuron is not None else 0.0
        stake_sum += stake
        for uid, w in row.items():
            total[uid] = total.get(uid, 0.0) + stake * w
    return {uid: w / stake_sum for uid, w in total.items()} if stake_sum else {}


def _validator_state(workdir: Path) -> dict[str, Any]:
    """The first validator's persisted state (`{}` in a run without validators)."""
    for path in sorted((workdir / "validators").glob("*/validator-*.json")):
        return json.loads(path.read_text())
    return {}


def _scores(state: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-uid moving averages: the components (gradient, steps, bandwidth) and `total`, the
    average that sets weights."""
    components = state.get("components", {})
    return {uid: {**components.get(uid, {}), "total": total}
            for uid, total in sorted(state.get("ema", {}).items(), key=lambda kv: int(kv[0]))}


def print_table(summary: dict[str, Any]) -> None:
    print(f"\n{'epoch':>5} {'loss':>8} {'participants':>12} {'allreduce s':>11}  checkpoint")
    for e in summary["epochs"]:
        loss = f"{e['loss']:.4f}" if e["loss"] is not None else "-"
        secs = f"{e['allreduce_seconds']:.2f}" if e["allreduce_seconds"] is not None else "-"
        print(f"{e['epoch']:>5} {loss:>8} {len(e['participants']):>12} {secs:>11}  "
              f"{e['checkpoint_tag'] or '-'}")
    print(f"\n{'uid':>4} {'role':<12} {'score':>7} {'weight':>7} {'incentive':>9}")
    for uid, name in summary["roles"].items():
        role = summary["cheaters"].get(uid, name)
        score = summary["scores"].get(uid, {}).get("total")
        print(f"{uid:>4} {role:<12} {_fmt(score):>7} {_fmt(summary['weights'].get(uid)):>7} "
              f"{_fmt(summary['incentive'].get(uid)):>9}")
    phases = summary.get("phases", {})
    if phases.get("compute_share") is not None:
        print(f"\nminers' time: {100 * phases['compute_share']:.0f}% training; median epoch "
              f"{phases['train_seconds']:.1f} s training, {phases['wait_seconds']:.1f} s waiting "
              f"for the round, {phases['round_seconds']:.1f} s in it", flush=True)
    print(f"\nok: {summary['ok']}   checkpoints: {summary['store']}", flush=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def save_plot(summary: dict[str, Any], path: Path) -> None:
    """Loss per epoch and weight per uid, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    points = [(e["epoch"], e["loss"]) for e in summary["epochs"] if e["loss"] is not None]
    if points:
        left.plot(*zip(*points, strict=True), marker="o")
        left.set_xticks([epoch for epoch, _ in points])
    left.set(title="swarm loss", xlabel="epoch", ylabel="mean training loss")
    uids = list(summary["roles"])
    labels = [summary["cheaters"].get(u, summary["roles"][u]) for u in uids]
    right.bar(range(len(uids)), [summary["weights"].get(u, 0.0) for u in uids],
              color=["tab:red" if u in summary["cheaters"] else "tab:blue" for u in uids])
    right.set_xticks(range(len(uids)), [f"{u}\n{lab}" for u, lab in zip(uids, labels,
                                                                         strict=True)])
    right.set(title="weights on the local chain", ylabel="weight")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
