"""Distillation: the losses, the data from an escalation log or a dataset, and `kascade distill` (the trainer)."""
