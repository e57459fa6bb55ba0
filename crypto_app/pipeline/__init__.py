"""The pipeline: validate, resolve identity, load, keep checkpoints and run bookkeeping."""
