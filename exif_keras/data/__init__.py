"""Stage 2: records -> batches of patches (tf.data decoder, parser, pipeline)."""
