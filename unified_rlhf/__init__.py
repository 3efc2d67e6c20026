"""Unified RLHF: every preference-optimisation method as one weighted gradient.

    -grad L = w+ grad log pi(y+|x) - w- grad log pi(y-|x)
"""

from .objectives import REGISTRY, Objective, get, register

__version__ = "0.1.0"
__all__ = ["REGISTRY", "Objective", "get", "register", "__version__"]
