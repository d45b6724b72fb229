"""Helpers shared by the test-suite and benchmarks: tiny random models built on the fly."""
