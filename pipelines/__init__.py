"""Stage definitions and orchestration: the DAG, fingerprints, the disk cache, Dask."""
