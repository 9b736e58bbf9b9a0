"""m2s2l-deploy: the M2S2L video anomaly detector from PyTorch to production."""

__version__ = "0.1.0"
