"""Inputs: source URIs to frame readers, the capture thread, synthetic scenes."""
