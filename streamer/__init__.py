"""streamer: live panoptic segmentation of video streams."""

__version__ = "0.1.0"
