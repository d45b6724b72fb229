"""Probes: small linear / low-rank models on hidden states, and their safetensors file format."""

from sedac.probes.format import FORMAT_VERSION, ProbeMeta, band_name
from sedac.probes.probe import Probe, load_probe, save_probe, update_calibration

__all__ = ["FORMAT_VERSION", "Probe", "ProbeMeta", "band_name", "load_probe", "save_probe", "update_calibration"]
