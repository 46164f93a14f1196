"""The pipeline's algorithms as pure functions on arrays, testable without a model."""
