"""hivemind glue: DHT start/join, identity, signed records, swarm state, gradient averaging."""
