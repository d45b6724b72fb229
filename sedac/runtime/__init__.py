"""sedac runtime: the skip policy (shared by every backend), the HF integration, MLP ops and the vLLM plugin."""
