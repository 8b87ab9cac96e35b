"""Data-parallel training of both twins on the frameworks' own engines (``meshes``: JAX over a Mesh
and jax.distributed; ``ddp``: torch DistributedDataParallel) and its parity (``check``)."""
