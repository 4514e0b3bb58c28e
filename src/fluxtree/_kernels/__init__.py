"""Compiled kernels: the traversal core (`_walk`) and the pack/scatter kernels (`_flat`)."""
