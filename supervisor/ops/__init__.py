"""What the outside sees: phases, health endpoints, metrics, systemd notifications."""
