// pm2 processes for the real network. Edit the placeholders (<...>) first, then:
//   pm2 start deploy/ecosystem.config.js --only miner
//   pm2 start deploy/ecosystem.config.js --only validator
const common = [
  "--netuid", "<NETUID>",
  "--subtensor.network", "finney",
  "--neuron.run_id", "fineweb-gpt2",
  "--model.preset", "gpt2-124m",
  // fp16 halves the bytes (honest fingerprint spread 1.8e-3 < tolerance 6e-3): a gpt2-124m round
  // then fits the 60 s --averaging.allreduce_timeout at 100 Mbit/s (fp32 would need ~80 s).
  "--averaging.compression", "fp16",
  "--store.kind", "hub", "--store.repo_id", "<ORG>/<REPO>",
  "--wandb.mode", "online",
  "--neuron.initial_peers", "/ip4/<BOOTSTRAP_IP>/tcp/8009/p2p/<BOOTSTRAP_PEER_ID>",
];

module.exports = {
  apps: [
    {
      name: "miner",
      script: "neurons/miner.py",
      interpreter: ".venv/bin/python",
      args: [
        ...common,
        "--wallet.name", "<COLDKEY>", "--wallet.hotkey", "<MINER_HOTKEY>",
        "--axon.ip", "0.0.0.0", "--axon.port", "8091", "--axon.external_ip", "<PUBLIC_IP>",
        "--dht.ip", "0.0.0.0", "--dht.port", "8009", "--dht.announce_ip", "<PUBLIC_IP>",
        "--averaging.trigger", "validator",
        "--neuron.device", "cuda",
      ],
      env: { HF_TOKEN: "<HF_WRITE_TOKEN>", WANDB_API_KEY: "<WANDB_KEY>" },
      max_restarts: 10,
      restart_delay: 10000,
      // Signal the neuron only (it stops its DHT/averager/p2pd itself) and give it longer than
      // --neuron.stop_timeout (20 s) before pm2 sends SIGKILL (pm2's default is 1.6 s).
      treekill: false,
      kill_timeout: 30000,
    },
    {
      name: "validator",
      script: "neurons/validator.py",
      interpreter: ".venv/bin/python",
      args: [
        ...common,
        "--wallet.name", "<COLDKEY>", "--wallet.hotkey", "<VALIDATOR_HOTKEY>",
        "--dht.ip", "0.0.0.0", "--dht.port", "8010", "--dht.announce_ip", "<PUBLIC_IP>",
        "--neuron.device", "cuda",
      ],
      env: { WANDB_API_KEY: "<WANDB_KEY>" },
      max_restarts: 10,
      restart_delay: 10000,
      // Signal the neuron only (it stops its DHT/averager/p2pd itself) and give it longer than
      // --neuron.stop_timeout (20 s) before pm2 sends SIGKILL (pm2's default is 1.6 s).
      treekill: false,
      kill_timeout: 30000,
    },
  ],
};
