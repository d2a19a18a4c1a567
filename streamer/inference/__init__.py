"""Models and fusion: the two networks, the Panoptic FPN fusion rule, the inference worker."""
