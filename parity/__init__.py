"""Shared, framework-free part: the variant table, conversion rules, checkpoints, parity and bench.

Importing ``parity`` imports neither torch nor jax; the submodules that need them
(``convert``, ``io``, ``compare``, ``bench``) import them on use.
"""

__all__ = ["specs", "flops"]
__version__ = "0.1.0"
