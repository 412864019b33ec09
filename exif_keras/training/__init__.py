"""Stage 4: configuration, the training loop, devices, evaluation."""
