"""Events: what happens in the sources (tracks, line crossings, zone entries and exits, counts), logged
on disk first (log.py), then delivered by sinks from the log (mqtt.py). kinds.py derives them from
the frame results; output.py is the Output that does both beside the pipeline."""
