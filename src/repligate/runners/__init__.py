"""Shared diffusers mechanics: device and dtype, weights, pipeline cache, schedulers by
Replicate's names, seeds, progress and cancel. Model modules stay short by using these."""
