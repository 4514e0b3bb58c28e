"""Tree layer: ``fmap`` and leaf/node collection against optree, jax and plain Python.

Target (tree-layer issue): ``fmap`` (identity cache on) no slower than the faster of
``optree.tree_map`` and ``jax.tree_util.tree_map`` on the same tree in the same run;
leaf collection at most 60 ns per node.  ``f`` is the identity, so the traversal is
what is measured.  The anchors sit in the same class as the fluxtree method so that
every ratio comes from one machine and one run; ``track_*`` methods report ns per leaf
(or node) and the fluxtree / best-anchor ratio directly.

Trees (``common.py``): ``mlp_dict`` (1,000 layers of ``{"weight", "bias"}``),
``mlp_record`` (the same with ``@functor`` records; optree and jax cannot traverse
those, so the anchors run on ``mlp_dict``) and ``wide`` (100 dicts of 100 arrays).
"""
from __future__ import annotations

from .common import (
    TREES,
    Benchmark,
    count_leaves,
    count_nodes,
    first,
    ft,
    jax_tree_util,
    median_seconds,
    need_jax,
    need_optree,
    optree,
    py_leaves,
    py_map,
    py_map2,
)

TREE_NAMES = list(TREES)


def _anchors(*pairs):
    """The available (name, callable) anchor pairs."""
    return [(name, fn) for name, mod, fn in pairs if mod is not None]


class TreeMap(Benchmark):
    """``fmap(f, x)`` versus ``optree.tree_map``, ``jax.tree_util.tree_map``, recursion."""

    params = [TREE_NAMES]
    param_names = ["tree"]

    def setup(self, tree):
        build, build_anchor = TREES[tree]
        self.x = build()
        self.xa = build_anchor()
        self.f = lambda a: a
        self.n_leaves = count_leaves(self.x)

    def time_fluxtree_fmap(self, tree):
        ft.fmap(self.f, self.x)

    def time_fluxtree_fmap_nocache(self, tree):
        ft.fmap(self.f, self.x, cache=None)

    def time_optree_tree_map(self, tree):
        optree.tree_map(self.f, self.xa)

    time_optree_tree_map.setup = need_optree

    def time_jax_tree_map(self, tree):
        jax_tree_util.tree_map(self.f, self.xa)

    time_jax_tree_map.setup = need_jax

    def time_python_recursion(self, tree):
        py_map(self.f, self.xa)

    def peakmem_fluxtree_fmap(self, tree):
        ft.fmap(self.f, self.x)

    # -- ns per leaf and ratios, measured in-process (median of repeats) --------------
    def _ns_per_leaf(self, fn):
        return 1e9 * median_seconds(fn) / self.n_leaves

    def track_fluxtree_fmap_ns_per_leaf(self, tree):
        return self._ns_per_leaf(lambda: ft.fmap(self.f, self.x))

    track_fluxtree_fmap_ns_per_leaf.unit = "ns/leaf"

    def track_fluxtree_fmap_nocache_ns_per_leaf(self, tree):
        return self._ns_per_leaf(lambda: ft.fmap(self.f, self.x, cache=None))

    track_fluxtree_fmap_nocache_ns_per_leaf.unit = "ns/leaf"

    def track_fmap_ratio_to_best_anchor(self, tree):
        """fluxtree fmap time / fastest of optree.tree_map, jax tree_map (target <= 1)."""
        anchors = _anchors(
            ("optree", optree, lambda: optree.tree_map(self.f, self.xa)),
            ("jax", jax_tree_util, lambda: jax_tree_util.tree_map(self.f, self.xa)),
        )
        if not anchors:
            raise NotImplementedError("neither optree nor jax is installed")
        best = min(median_seconds(fn) for _, fn in anchors)
        return median_seconds(lambda: ft.fmap(self.f, self.x)) / best

    track_fmap_ratio_to_best_anchor.unit = "ratio"


class TreeMapMulti(Benchmark):
    """``fmap(f, x, y)`` over two trees of one structure versus ``optree.tree_map(f, x, y)``."""

    params = [TREE_NAMES]
    param_names = ["tree"]

    def setup(self, tree):
        build, build_anchor = TREES[tree]
        self.x, self.y = build(), build()
        self.xa, self.ya = build_anchor(), build_anchor()
        self.f = first
        self.n_leaves = count_leaves(self.x)

    def time_fluxtree_fmap2(self, tree):
        ft.fmap(self.f, self.x, self.y)

    def time_optree_tree_map2(self, tree):
        optree.tree_map(self.f, self.xa, self.ya)

    time_optree_tree_map2.setup = need_optree

    def time_jax_tree_map2(self, tree):
        jax_tree_util.tree_map(self.f, self.xa, self.ya)

    time_jax_tree_map2.setup = need_jax

    def time_python_recursion2(self, tree):
        py_map2(self.f, self.xa, self.ya)

    def track_fmap2_ratio_to_best_anchor(self, tree):
        """fluxtree two-tree fmap time / fastest two-tree optree or jax tree_map."""
        anchors = _anchors(
            ("optree", optree, lambda: optree.tree_map(self.f, self.xa, self.ya)),
            ("jax", jax_tree_util, lambda: jax_tree_util.tree_map(self.f, self.xa, self.ya)),
        )
        if not anchors:
            raise NotImplementedError("neither optree nor jax is installed")
        best = min(median_seconds(fn) for _, fn in anchors)
        return median_seconds(lambda: ft.fmap(self.f, self.x, self.y)) / best

    track_fmap2_ratio_to_best_anchor.unit = "ratio"


class TreeLeaves(Benchmark):
    """``fleaves`` and ``fcollect`` versus ``optree.tree_leaves``, jax, recursion."""

    params = [TREE_NAMES]
    param_names = ["tree"]

    def setup(self, tree):
        build, build_anchor = TREES[tree]
        self.x = build()
        self.xa = build_anchor()
        self.n_leaves = count_leaves(self.x)
        self.n_nodes = count_nodes(self.x)

    def time_fluxtree_fleaves(self, tree):
        ft.fleaves(self.x)

    def time_fluxtree_fcollect(self, tree):
        ft.fcollect(self.x)

    def time_optree_tree_leaves(self, tree):
        optree.tree_leaves(self.xa)

    time_optree_tree_leaves.setup = need_optree

    def time_jax_tree_leaves(self, tree):
        jax_tree_util.tree_leaves(self.xa)

    time_jax_tree_leaves.setup = need_jax

    def time_python_recursion_leaves(self, tree):
        py_leaves(self.xa)

    def track_fluxtree_fleaves_ns_per_node(self, tree):
        """Target: <= 60 ns per node (containers and leaves)."""
        return 1e9 * median_seconds(lambda: ft.fleaves(self.x)) / self.n_nodes

    track_fluxtree_fleaves_ns_per_node.unit = "ns/node"

    def track_fluxtree_fcollect_ns_per_node(self, tree):
        """Target: <= 60 ns per node (containers and leaves)."""
        return 1e9 * median_seconds(lambda: ft.fcollect(self.x)) / self.n_nodes

    track_fluxtree_fcollect_ns_per_node.unit = "ns/node"

    def track_fleaves_ratio_to_best_anchor(self, tree):
        """fluxtree fleaves time / fastest of optree.tree_leaves, jax tree_leaves."""
        anchors = _anchors(
            ("optree", optree, lambda: optree.tree_leaves(self.xa)),
            ("jax", jax_tree_util, lambda: jax_tree_util.tree_leaves(self.xa)),
        )
        if not anchors:
            raise NotImplementedError("neither optree nor jax is installed")
        best = min(median_seconds(fn) for _, fn in anchors)
        return median_seconds(lambda: ft.fleaves(self.x)) / best

    track_fleaves_ratio_to_best_anchor.unit = "ratio"
