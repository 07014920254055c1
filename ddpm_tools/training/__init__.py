"""Training: losses of a DDPM network (and, later, the training loop)."""
