// pm2 processes for the real network. Edit the placeholders (<...>) first, put the secrets in
// deploy/.env (cp deploy/.env.example deploy/.env; git ignores it), then from anywhere:
//   pm2 start deploy/ecosystem.config.js --only miner
//   pm2 start deploy/ecosystem.config.js --only validator
// Paths are derived from this file's location: the repo root is its parent folder and the
// interpreter is the repo's .venv, so pm2's own working directory does not matter.
const fs = require("fs");
const path = require("path");

const ROOT = path.resolve(__dirname, "..");
const PYTHON = path.resolve(__dirname, "..", ".venv/bin/python");
const ENV_FILE = path.join(__dirname, ".env");

// KEY=VALUE lines (the systemd units read the same file with EnvironmentFile=); # comments.
function readEnv(file) {
  if (!fs.existsSync(file)) {
    throw new Error(`${file} is missing: cp deploy/.env.example deploy/.env and fill it in`);
  }
  const env = {};
  for (const raw of fs.readFileSync(file, "utf8").split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    if (eq < 1) throw new Error(`${file}: not KEY=VALUE: ${line}`);
    const value = line.slice(eq + 1).trim().replace(/^(["'])(.*)\1$/, "$2");
    env[line.slice(0, eq).trim()] = value;
  }
  return env;
}
const secrets = readEnv(ENV_FILE);

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
      script: path.join(ROOT, "neurons/miner.py"),
      interpreter: PYTHON,
      cwd: ROOT,
      args: [
        ...common,
        "--wallet.name", "<COLDKEY>", "--wallet.hotkey", "<MINER_HOTKEY>",
        "--axon.ip", "0.0.0.0", "--axon.port", "8091", "--axon.external_ip", "<PUBLIC_IP>",
        "--dht.ip", "0.0.0.0", "--dht.port", "8009", "--dht.announce_ip", "<PUBLIC_IP>",
        "--averaging.trigger", "validator",
        "--neuron.device", "cuda",
      ],
      env: { ...secrets },  // HF_TOKEN (write access), WANDB_API_KEY
      max_restarts: 10,
      restart_delay: 10000,
      stop_exit_codes: [2],  // a set-up mistake (one line naming the fix): no restart loop
      // Signal the neuron only (it stops its DHT/averager/p2pd itself) and give it longer than
      // --neuron.stop_timeout (20 s) before pm2 sends SIGKILL (pm2's default is 1.6 s).
      treekill: false,
      kill_timeout: 30000,
    },
    {
      name: "validator",
      script: path.join(ROOT, "neurons/validator.py"),
      interpreter: PYTHON,
      cwd: ROOT,
      args: [
        ...common,
        "--wallet.name", "<COLDKEY>", "--wallet.hotkey", "<VALIDATOR_HOTKEY>",
        "--dht.ip", "0.0.0.0", "--dht.port", "8010", "--dht.announce_ip", "<PUBLIC_IP>",
        "--neuron.device", "cuda",
      ],
      env: { ...secrets },  // WANDB_API_KEY (HF_TOKEN only for a private repo)
      max_restarts: 10,
      restart_delay: 10000,
      stop_exit_codes: [2],  // a set-up mistake (one line naming the fix): no restart loop
      // Signal the neuron only (it stops its DHT/averager/p2pd itself) and give it longer than
      // --neuron.stop_timeout (20 s) before pm2 sends SIGKILL (pm2's default is 1.6 s).
      treekill: false,
      kill_timeout: 30000,
    },
  ],
};
