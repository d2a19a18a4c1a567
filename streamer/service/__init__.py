"""The daemon: the pipeline wiring, health and progress, metrics, systemd notification."""
