"""Outputs: overlay rendering, crash-safe video, COCO panoptic export, the live window, the sink thread."""
