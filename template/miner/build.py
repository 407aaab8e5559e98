"""Wire a miner from the config: chain identity, DHT, model, data, store, averager, Axon."""

from __future__ import annotations

import functools
import logging

import bittensor as bt  # noqa: F401  (import before hivemind: NOTES)

from hivemind_utils.averaging import SwarmAverager
from hivemind_utils.dht import start_dht
from hivemind_utils.identity import identity_path
from hivemind_utils.records import record_key_id
from hivemind_utils.swarm_state import ProgressReporter, read_swarm_state
from template.admission import swarm_admission
from template.chain import build_chain
from template.checkpoints import build_store
from template.config import Config
from template.data import build_page_source, load_tokenizer
from template.device import resolve_device, resolve_precision
from template.miner.adversary import make_adversary
from template.miner.handlers import MinerHandlers
from template.miner.miner import RECORD_EXPIRATION, Miner
from template.model import build_model
from template.proof import sketch_seed
from template.protocol import AllReduce, IsAlive, Train
from template.telemetry import Telemetry
from template.training import build_optimizer
from template.transport import CallerPolicy, MetagraphCache, build_axon, start_axon
from template.wallet import load_wallet, registered_uid

logger = logging.getLogger(__name__)


def build_miner(cfg: Config) -> Miner:
    """Everything a miner needs, started; `Miner.close()` stops it all in reverse order."""
    wallet = load_wallet(cfg.wallet)
    chain = build_chain(cfg)
    uid = registered_uid(chain, wallet, cfg)
    closers = [chain.close]
    dht = start_dht(cfg.dht, run_id=cfg.neuron.run_id, initial_peers=cfg.neuron.initial_peers,
                    identity_path=identity_path(cfg.wallet))
    closers.append(dht.shutdown)
    peer_id = dht.peer_id.to_base58()
    adversary = make_adversary(cfg.neuron.adversary)
    bound = (chain.bind_peer_id(wallet, peer_id, record_key_id(dht.record_subkey))
             if adversary.binds_peer_id else None)
    if bound is not None and not bound.success:
        logger.warning("could not bind PeerID %s to uid %d on chain: %s", peer_id, uid,
                       bound.message)

    store = build_store(cfg.store)
    device = resolve_device(cfg.neuron.device)
    precision = resolve_precision(cfg.neuron.precision, device)
    model = build_model(cfg.model, seed=cfg.neuron.seed).to(device)
    miner = Miner(
        cfg=cfg, uid=uid, peer_id=peer_id, wallet=wallet, chain=chain, model=model,
        adversary=adversary,
        optimizer=build_optimizer(model, cfg.optim), tokenizer=load_tokenizer(),
        source=build_page_source(cfg.data), store=store,
        averager=None,  # set below: it serves `miner.shared_state` to joining peers
        reporter=ProgressReporter(dht=dht, hotkey=wallet.hotkey.ss58_address,
                                  expiration=RECORD_EXPIRATION),
        read_state=functools.partial(
            read_swarm_state, dht, run_id=cfg.neuron.run_id,
            target_batch_size=cfg.averaging.target_batch_size,
            admission=swarm_admission(chain, store,
                                      max_samples=cfg.averaging.target_batch_size)),
        device=device, precision=precision,
        telemetry=Telemetry(cfg, role="miner", name=f"miner-{uid}"), closers=closers,
    )
    miner.averager = SwarmAverager(dht=dht, run_id=cfg.neuron.run_id, cfg=cfg.averaging,
                                   params=model.parameters(), compression=adversary.compression(),
                                   corrupt=adversary.corruption(),  # type: ignore[arg-type]
                                   state_provider=miner.shared_state)
    # Closed in reverse order: the averager stops before the DHT it talks through.
    miner.closers += [miner.averager.shutdown, miner.reporter.clear, miner.telemetry.close]
    _serve(miner, cfg, wallet, chain, dht_peer=peer_id)
    return miner


def _serve(miner: Miner, cfg: Config, wallet: bt.Wallet, chain, *, dht_peer: str) -> None:
    avg = cfg.averaging
    handlers = MinerHandlers(
        ledger=miner.ledger, desk=miner.desk, peer_id=dht_peer,
        sketch_seed=functools.partial(sketch_seed, cfg.neuron.run_id),
        current_epoch=lambda: miner.epoch,
        round_timeout=avg.round_wait + avg.matchmaking_time + avg.allreduce_timeout,
        override_train=functools.partial(miner.adversary.answer_train, miner),
    )
    axon = build_axon(
        wallet=wallet, graph=MetagraphCache(chain).get, ip=cfg.axon.ip, port=cfg.axon.port,
        external_ip=cfg.axon.external_ip, external_port=cfg.axon.external_port,
        policy=CallerPolicy.from_config(cfg.blacklist, local_devnet=cfg.subtensor.is_local_devnet),
        max_pending_rounds=cfg.blacklist.max_pending_rounds,
        handlers={Train: handlers.train, AllReduce: handlers.allreduce,
                  IsAlive: handlers.is_alive},
    )
    start_axon(axon)
    miner.closers.append(axon.stop)
    served = chain.serve_axon(wallet, ip=cfg.axon.external_ip or cfg.axon.ip,
                              port=cfg.axon.external_port or cfg.axon.port)
    if not served.success:
        logger.warning("serve_axon failed: %s", served.message)
