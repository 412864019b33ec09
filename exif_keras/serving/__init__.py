"""Stage 5: the SavedModel signature, the exporter, the predictor."""
