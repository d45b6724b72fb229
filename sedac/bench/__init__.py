"""Benchmarks: offline (vLLM engines), online (OpenAI endpoints), quality, reports; see docs/metrics.md."""
