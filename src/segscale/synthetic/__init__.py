"""The synthetic data generator for tests and benchmarks."""
