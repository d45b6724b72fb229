"""sedac: certified MLP skipping for LLM decoding.

Pipeline: ``collect`` hidden states -> ``train-probe`` -> ``calibrate`` thresholds with a
finite-sample guarantee -> ``serve`` through a vLLM plugin -> ``bench`` against the unmodified model.
"""

__version__ = "0.1.0"
