"""The validator neuron: wiring of the round functions, state, weights and logging.

    validator = Validator(cfg)
    validator.run()          # until Ctrl+C (or --neuron.epochs epochs scored)
    validator.close()

One loop (``step``), every ``--validator.poll_interval`` seconds, or sooner when the progress
records (read every :data:`PROGRESS_POLL` s meanwhile) say a round is due:

1. read the metagraph and the swarm state (DHT); forget scores of replaced hotkeys;
2. when the swarm's epoch moved past the one being collected, score that epoch
   (:func:`~template.validator.epoch.epoch_scores`) into the moving average;
3. when :func:`~template.validator.allreduce_round.ready_for_round`, run the AllReduce round and,
   alongside it, Train-verify its participants not verified yet this epoch; score the epoch;
   otherwise, every ``--validator.train_interval`` seconds, a Train round on a sample of
   serving miners;
4. set weights when the chain's rate limit allows; persist the state; log to wandb.

Every decision is a call into a small module (verify, train_round, allreduce_round, epoch,
scoring, weights, state); this class only holds the long-lived parts and the clock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from pathlib import Path
from typing import Any

import bittensor as bt

from hivemind_utils import SwarmAverager, read_swarm_state, start_dht
from hivemind_utils.identity import identity_path
from hivemind_utils.swarm_state import SwarmState
from template.admission import swarm_admission
from template.attestation import Attested, hotkey_peers
from template.chain import Chain, build_chain
from template.checkpoints import build_store
from template.config import Config
from template.consensus import consensus_tolerance
from template.contribution import audit_gather, block_tolerance
from template.data import build_page_source, load_tokenizer
from template.device import resolve_device, resolve_precision
from template.model import count_parameters
from template.preflight import PermitWatch
from template.proof import sketch_seed
from template.reduction import RoundIntegrity
from template.telemetry import Telemetry
from template.training import learning_rate
from template.transport import build_dendrite
from template.validator import weights as weights_mod
from template.validator.allreduce_round import (
    AllReduceOutcome,
    Canonical,
    ContributionRules,
    allreduce_round,
    live_participants,
    ready_for_round,
)
from template.validator.epoch import (
    EpochRecord,
    epoch_components,
    epoch_scores,
    explain_scores,
)
from template.validator.reference import ReferenceModel, wait_for_signed
from template.validator.scoring import decay_absent, ema_update, throughput
from template.validator.state import ValidatorState, forget_replaced, load_state, save_state
from template.validator.train_round import TrainContext, sample_uids, train_round
from template.validator.verify import TrainVerdict, VerifyThresholds
from template.wallet import load_wallet, registered_uid

logger = logging.getLogger(__name__)
PROGRESS_POLL = 0.5
"""Seconds between reads of the swarm's progress records while the validator waits."""


def state_path(cfg: Config) -> Path:
    """``<workdir>/validator-<wallet>-<hotkey>.json`` (one file per validator hotkey)."""
    name = f"validator-{cfg.wallet.name}-{cfg.wallet.hotkey}.json"
    return Path(cfg.neuron.workdir).expanduser() / name


class Validator:
    """Long-lived parts of a validator (see the module docstring)."""

    def __init__(self, cfg: Config, *, chain: Chain | None = None):
        self.cfg = cfg
        self.wallet = load_wallet(cfg.wallet)
        self.chain = chain or build_chain(cfg)
        self.uid = registered_uid(self.chain, self.wallet, cfg)
        self.permit = PermitWatch(cfg)  # warns now and every few minutes while it has none
        self.permit.check(self.chain.metagraph(), self.uid)
        self.state_path = state_path(cfg)
        self.state: ValidatorState = load_state(self.state_path)
        self.rng = random.Random()  # unpredictable: miners must not guess the checked batches
        device = resolve_device(cfg.neuron.device)
        self.precision = resolve_precision(cfg.neuron.precision, device)
        self.store = build_store(cfg.store)
        self.source = build_page_source(cfg.data)
        self.tokenizer = load_tokenizer()
        self.tolerance = consensus_tolerance(cfg.averaging.compression,
                                             cfg.validator.fingerprint_tolerance)
        self.reference = ReferenceModel(model_cfg=cfg.model, seed=cfg.neuron.seed,
                                        store=self.store, run_id=cfg.neuron.run_id,
                                        peers=lambda: hotkey_peers(self.chain),
                                        tolerance=self.tolerance, device=device)
        for epoch, reference in sorted(self.state.references.items()):
            self.reference.expect(epoch, reference)
        self.dht = start_dht(cfg.dht, run_id=cfg.neuron.run_id,
                             initial_peers=cfg.neuron.initial_peers,
                             identity_path=identity_path(cfg.wallet))
        self.averager = SwarmAverager(dht=self.dht, run_id=cfg.neuron.run_id, cfg=cfg.averaging,
                                      params=self.reference.model.parameters(), auxiliary=True,
                                      audit=True)
        # Only records signed by keys bound to registered hotkeys, at believable epochs, move
        # this validator's epoch (anyone can sign records with a key of its own making).
        self.admission = swarm_admission(self.chain, self.store,
                                         max_samples=cfg.averaging.target_batch_size)
        self.telemetry = Telemetry(cfg, role="validator", name=f"validator-{self.uid}")
        self.thresholds = VerifyThresholds(
            min_cosine=cfg.validator.min_cosine, min_norm_ratio=cfg.validator.min_norm_ratio,
            check_batches=cfg.validator.check_batches, fingerprint_tolerance=self.tolerance)
        self.rate_limit = weights_mod.chain_rate_limit(self.chain)
        self._next_train = 0.0
        self._sampling: asyncio.Task | None = None
        """The background Train round on a sample of miners, while it runs."""
        self._sampled: set[int] = set()
        self._reference_in_use = asyncio.Lock()
        """One Train round at a time: each recomputes gradients on the reference model."""
        self._samples_seen, self._samples_changed = -1, time.monotonic()
        self._dendrite: bt.Dendrite | None = None
        self._proofs: dict[tuple[int, int], tuple[tuple[float, ...], ...]] = {}
        """(epoch, uid) -> per-batch sketches of the uid's longest verified Train answer."""
        logger.info("validator uid %d, state %s (last scored epoch %d), DHT %s", self.uid,
                    self.state_path, self.state.last_epoch, self.dht.peer_id)

    # ------------------------------------------------------------------ running

    def run(self, *, max_steps: int | None = None) -> None:
        """Loop until interrupted, ``--neuron.epochs`` epochs are scored, or ``max_steps``."""
        asyncio.run(self._run(max_steps))

    async def _run(self, max_steps: int | None) -> None:
        external_ip = self.cfg.axon.external_ip or self.cfg.axon.ip
        self._dendrite = build_dendrite(self.wallet, external_ip=external_ip)
        try:
            steps = 0
            while max_steps is None or steps < max_steps:
                await self.step()
                steps += 1
                if self.cfg.neuron.epochs and self.state.last_epoch + 1 >= self.cfg.neuron.epochs:
                    logger.info("scored %d epochs (--neuron.epochs): stopping",
                                self.state.last_epoch + 1)
                    break
                await self._pause(self.cfg.validator.poll_interval)
        finally:
            await self._sampling_done()
            await self._dendrite.aclose_session()
            self._dendrite = None

    async def _pause(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the next step, but return as soon as the progress records
        say the current epoch's round is due or the swarm moved on (read every
        :data:`PROGRESS_POLL` s): a round starts that soon after the work is done."""
        deadline = time.monotonic() + seconds
        loop = asyncio.get_running_loop()
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(PROGRESS_POLL, left))
            record = self.state.current
            if record is None or record.allreduce_done:
                continue
            swarm = await loop.run_in_executor(None, self._read_swarm)
            if swarm.global_epoch > record.epoch or (
                    swarm.global_epoch == record.epoch and swarm.peers and self._ready(swarm)):
                return

    async def step(self) -> None:
        """One pass of the loop (see the module docstring)."""
        graph = self.chain.metagraph()
        self.permit.check(graph, self.uid)
        gone = forget_replaced(self.state, {n.uid: n.hotkey for n in graph.neurons})
        if gone:
            logger.info("forgot scores of replaced uids %s", gone)
        swarm = await asyncio.get_running_loop().run_in_executor(None, self._read_swarm)
        if swarm.peers:
            self._collect(swarm.global_epoch)
            record = self.state.current
            assert record is not None
            if self.reference.epoch != record.epoch:
                await self._sampling_done()  # never swap the weights under a running check
            if self.reference.ensure(record.epoch):
                if not record.allreduce_done and self._ready(swarm):
                    await self._allreduce(graph, swarm, record)  # Train checks run alongside
                else:
                    await self._maybe_train_round(graph, record)
        self.maybe_set_weights(graph)
        self.save()

    def _read_swarm(self) -> SwarmState:
        return read_swarm_state(self.dht, run_id=self.cfg.neuron.run_id,
                                target_batch_size=self.cfg.averaging.target_batch_size,
                                admission=self.admission)

    def _ready(self, swarm: SwarmState) -> bool:
        if swarm.samples_accumulated != self._samples_seen:
            self._samples_seen, self._samples_changed = swarm.samples_accumulated, time.monotonic()
        return ready_for_round(swarm, min_peers=self.cfg.averaging.min_group_size,
                               idle_seconds=time.monotonic() - self._samples_changed,
                               patience=self.cfg.validator.round_patience,
                               straggler_wait=self.cfg.averaging.straggler_wait)

    # ------------------------------------------------------------------ epochs and scores

    def _collect(self, epoch: int) -> None:
        """Make ``state.current`` the record of ``epoch``, scoring the previous one first."""
        current = self.state.current
        if current is not None and current.epoch < epoch:
            self.finish_epoch()
        if self.state.current is None and epoch > self.state.last_epoch:
            self.state.current = EpochRecord(epoch=epoch)

    def finish_epoch(self) -> dict[int, float]:
        """Score ``state.current`` into the moving average and close it (idempotent per epoch)."""
        record = self.state.current
        self.state.current = None
        if record is None or record.epoch <= self.state.last_epoch:
            return {}
        scores = epoch_scores(record, tolerance=self.tolerance)
        for uid, line in explain_scores(record, tolerance=self.tolerance).items():
            logger.info("epoch %d uid %d: %s", record.epoch, uid, line)
        alpha = self.cfg.validator.ema_alpha
        self.state.ema = decay_absent(ema_update(self.state.ema, scores, alpha=alpha),
                                      scores, alpha=alpha)
        parts = epoch_components(record)
        for name, values in (("gradient", parts.gradient), ("steps", parts.steps),
                             ("bandwidth", parts.bandwidth)):
            prior = {u: c.get(name, 0.0) for u, c in self.state.components.items()}
            now = {u: values.get(u, 0.0) for u in scores}
            for uid, value in ema_update(prior, now, alpha=alpha).items():
                self.state.components.setdefault(uid, {})[name] = value
        self.state.last_scores.update(scores)
        self.state.remember(record.epoch, scores)
        graph_hotkeys = {n.uid: n.hotkey for n in self.chain.metagraph().neurons}
        for uid in scores:
            if uid in graph_hotkeys:
                self.state.hotkeys[uid] = graph_hotkeys[uid]
        self.state.last_epoch = record.epoch
        self.save()
        self.telemetry.log({"epoch": record.epoch,
                            **{f"score/{u}": s for u, s in scores.items()},
                            **{f"ema/{u}": s for u, s in self.state.ema.items()}})
        logger.info("epoch %d scored: %s", record.epoch,
                    {u: round(s, 3) for u, s in sorted(scores.items())})
        return scores

    def maybe_set_weights(self, graph: Any = None) -> bool:
        """Set weights if the rate limit allows and someone has a positive average."""
        block = self.chain.block()
        if not weights_mod.weights_due(block=block, last_block=self.state.last_weights_block,
                                       rate_limit=self.rate_limit):
            return False
        result = weights_mod.set_weights(chain=self.chain, wallet=self.wallet,
                                         ema=self.state.ema, graph=graph or self.chain.metagraph())
        if result.success:
            self.state.last_weights_block = block
            self.state.count("weights")
            self.save()
        elif result.retry_after_blocks:
            self.state.last_weights_block = block - self.rate_limit + result.retry_after_blocks
        return result.success

    def save(self) -> None:
        save_state(self.state, self.state_path)

    # ------------------------------------------------------------------ rounds

    def _context(self, epoch: int) -> TrainContext:
        cfg = self.cfg
        return TrainContext(
            run_id=cfg.neuron.run_id, epoch=epoch, model=self.reference.model,
            reference_fingerprint=self.reference.fingerprint,
            sketch_seed=sketch_seed(cfg.neuron.run_id, epoch), tokenizer=self.tokenizer,
            source=self.source, pages_per_epoch=cfg.data.pages_per_epoch,
            seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size,
            thresholds=self.thresholds, bindings=self.chain.peer_bindings(),
            precision=self.precision)

    async def verify(self, graph: Any, record: EpochRecord,
                     uids: list[int]) -> dict[int, TrainVerdict]:
        """A Train round on ``uids`` for ``record.epoch``; results go into the record."""
        assert self._dendrite is not None
        async with self._reference_in_use:  # recomputation runs on the reference's .grad
            verdicts = await train_round(dendrite=self._dendrite, graph=graph, uids=uids,
                                         ctx=self._context(record.epoch), rng=self.rng,
                                         timeout=self.cfg.validator.query_timeout)
        for uid, verdict in verdicts.items():
            if not verdict.verifiable:
                continue  # our own data is damaged (logged): no score either way
            record.add_train(uid, gradient=verdict.gradient,
                             verified_samples=verdict.verified_samples)
            key = (record.epoch, uid)
            if verdict.ok and len(verdict.sketches) > len(self._proofs.get(key, ())):
                self._proofs[key] = verdict.sketches
        self._proofs = {k: v for k, v in self._proofs.items() if k[0] >= record.epoch}
        self.state.count("train")
        losses = [v.recomputed_loss for v in verdicts.values() if v.recomputed_loss is not None]
        self.telemetry.log({"epoch": record.epoch,
                            **({"swarm/loss": sum(losses) / len(losses)} if losses else {}),
                            **{f"gradient/{u}": v.gradient for u, v in verdicts.items()},
                            **{f"verified/{u}": v.verified_samples for u, v in verdicts.items()}})
        self.save()
        return verdicts

    async def _maybe_train_round(self, graph: Any, record: EpochRecord) -> None:
        """Start a Train round on a sample of miners in the background (the loop keeps
        watching the swarm meanwhile, so a due AllReduce never waits behind it)."""
        if self._sampling is not None:
            if not self._sampling.done():
                return
            await self._sampling_done()  # a failure surfaces here, as if it had been awaited
        if time.monotonic() < self._next_train:
            return
        self._next_train = time.monotonic() + self.cfg.validator.train_interval
        uids = sample_uids(graph, count=self.cfg.validator.sample_size, rng=self.rng,
                           exclude=[self.uid] if self.uid is not None else [])
        if uids:
            self._sampled = set(uids)
            self._sampling = asyncio.create_task(self.verify(graph, record, uids))

    async def _sampling_done(self) -> None:
        """Wait for the background Train round, if one runs (its exception propagates)."""
        task, self._sampling = self._sampling, None
        if task is not None:
            await task

    async def _allreduce(self, graph: Any, swarm: SwarmState,
                         record: EpochRecord) -> AllReduceOutcome | None:
        cfg = self.cfg
        bindings = self.chain.peer_bindings()
        serving = [n.uid for n in graph.neurons if n.is_serving and n.uid != self.uid]
        uids = live_participants(swarm, bindings, serving)
        if len(uids) < cfg.averaging.min_group_size:
            return None
        peer_of = {peer: uid for uid, peer in bindings.items()}
        reported = {peer_of[p.peer_id]: p.samples for p in swarm.peers
                    if p.epoch == swarm.global_epoch and p.peer_id in peer_of}
        sampling = self._sampling if self._sampling is not None and not self._sampling.done() \
            else None
        unverified = [u for u in uids if (u not in record.train
                      or record.train[u].verified_samples < reported.get(u, 0))
                      and not (sampling is not None and u in self._sampled)]
        # Proof of the epoch's work, checked while the round runs: the verdicts decide pay, not
        # who averages, so miners never wait for them (they are needed to judge contributions).
        verifying = (asyncio.create_task(self.verify(graph, record, unverified))
                     if unverified else None)
        signed: dict[str, Attested] = {}

        async def rules() -> ContributionRules:
            if verifying is not None:
                await verifying
            if sampling is not None:
                await self._sampling_done()
            return self._contribution_rules(record.epoch)

        assert self._dendrite is not None
        try:
            outcome = await allreduce_round(
                dendrite=self._dendrite, targets={u: graph.axon(u) for u in uids},
                bindings=bindings, canonical=functools.partial(
                    self._signed_checkpoints, record.epoch + 1, into=signed), epoch=record.epoch,
                average=lambda expected: self.averager.average(
                    weight=0, epoch=record.epoch, timeout=3 * cfg.averaging.matchmaking_time,
                    gather=audit_gather(sketch_seed(cfg.neuron.run_id, record.epoch)),
                    expected=expected, integrity=RoundIntegrity(
                        seed=sketch_seed(cfg.neuron.run_id, record.epoch),
                        tolerance=block_tolerance(cfg.averaging.compression))),
                aux_peer=self.averager.peer_id.to_base58(),
                round_id=f"e{record.epoch}-{self.uid}-{int(time.time())}", cfg=cfg.averaging,
                learning_rate=learning_rate(record.epoch, cfg.optim),
                tolerance=self.tolerance, retries=cfg.validator.allreduce_retries,
                fingerprint_dims=len(self.reference.fingerprint) or None,
                rules=rules)
        finally:
            if verifying is not None:
                await verifying  # the round may have ended before judging was reached
        self.state.count("allreduce" if outcome.completed else "allreduce_failed")
        record.add_allreduce(participants=list(outcome.participants),
                             transfers=outcome.transfers, drift=outcome.drift,
                             observed=outcome.observed,
                             consensus_checked=outcome.consensus_checked,
                             tampered=outcome.tampered)
        for uid, problem in outcome.tampered.items():
            logger.warning("AllReduce epoch %d: uid %d tampered with its contribution: %s",
                           record.epoch, uid, problem)
        logger.info("AllReduce epoch %d: completed %s, failed %s, reference %s, observed "
                    "(MB/s, lag s) %s", record.epoch, list(outcome.completed),
                    {u: str(r) for u, r in outcome.failures.items()}, outcome.reference,
                    {u: (round(throughput(t) / 1e6, 2), round(t.lag, 2)) for u, t in
                     outcome.transfers.items() if t is not None})
        if outcome.completed:
            if outcome.reference_fingerprint:  # a forged epoch-(e+1) is never the reference
                self.reference.expect(record.epoch + 1, outcome.reference_fingerprint)
                self.state.references = dict(self.reference.expected)  # survives a restart
            if outcome.canonical_tag in signed:
                self.reference.load(signed[outcome.canonical_tag].checkpoint)
            self.finish_epoch()
        return outcome

    def _contribution_rules(self, epoch: int) -> ContributionRules:
        cfg = self.cfg
        return ContributionRules(
            seed=sketch_seed(cfg.neuron.run_id, epoch), batch_size=cfg.data.batch_size,
            block_tolerance=block_tolerance(cfg.averaging.compression),
            num_values=count_parameters(self.reference.model),
            proofs={u: p for (e, u), p in self._proofs.items() if e == epoch})

    async def _signed_checkpoints(self, epoch: int, *,
                                  into: dict[str, Attested]) -> list[Canonical]:
        """The signed checkpoints of ``epoch`` (waited for), also kept in ``into`` by tag."""
        found = await wait_for_signed(self.store, epoch, run_id=self.cfg.neuron.run_id,
                                      peers=hotkey_peers(self.chain),
                                      timeout=self.cfg.validator.checkpoint_timeout)
        into.update({a.tag: a for a in found})
        return [Canonical(a.fingerprint, signer=a.pusher, tag=a.tag) for a in found]

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Persist, then stop the averager before the DHT (hivemind needs that order)."""
        self.save()
        self.telemetry.close()
        self.averager.shutdown()
        self.dht.shutdown()
        self.chain.close()
