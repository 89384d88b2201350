"""The per-node deployment workflow: states, retry policy, microsteps and variants."""
