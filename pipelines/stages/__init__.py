"""One module per stage: plain functions from a Job (config, dataset, upstream outputs) to
outputs on disk."""
