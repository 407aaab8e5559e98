"""Collaborative GPT-2 training on FineWeb: the subnet package (Bittensor template layout)."""

__version__ = "0.1.0"
