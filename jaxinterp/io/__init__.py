"""Checkpoints in and out: weights as safetensors / npz, orbax training state."""
