"""Stage 3: the Keras model (layers, losses, trunk, heads) and the run folder."""
