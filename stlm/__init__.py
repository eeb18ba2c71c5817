"""stlm: budget-matched ablations and sweeps for Super Tiny Language Models."""

__version__ = "0.1.0"
