"""Tools around the daemon: evaluation (PQ), the benchmark, the demo model trainer."""
