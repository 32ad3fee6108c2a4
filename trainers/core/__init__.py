"""The shared core of the trainers: flags, strategies, optimisation, the training loop."""
