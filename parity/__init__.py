"""Shared, framework-free part: the variant table, conversion rules, checkpoints, parity and bench.

Importing ``parity`` imports neither torch nor jax; the submodules that need them
(``convert``, ``io``, ``training``, ``runners``, ``check``, ``throughput``) import them on use.
"""

__all__ = ["specs", "flops"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # parity.check_pair without importing torch and jax with the package
    if name == "check_pair":
        from parity.check import check_pair

        return check_pair
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
