"""Scene analytics over tracks and masks: ground-plane calibration, speed, time in zones, heatmaps.

Pure functions and small per-source state; the pipeline (streamer.inference.worker.Follow) feeds them.
"""
