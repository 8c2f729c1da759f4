"""Training a model: the validated config, what it builds, the epoch loop, its step, checkpoints,
logs and the run directory.
"""
