"""jaxprune: pruning for JAX and Flax."""

__version__ = "0.1.0"

__all__ = []
