"""Stage 1: photos + EXIF -> sharded TFRecords (converter, sample, runners, manifest)."""
