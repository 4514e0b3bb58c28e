"""Exact derivatives: gradients, Jacobian- and Hessian-vector products, Hessians.

A tape records the layers, losses, ``Restructure`` rebuilds and array operations a
function runs on traced values; each op brings four rules (forward, backward, tangent,
tangent-backward), so one forward and one backward sweep give the gradient, and the same
sweeps carrying a block of tangents give exact Hessian-vector products (Pearlmutter's
R-operator) at a few gradients' cost.  See ``docs/derivatives.md``.
"""
from .api import gauss_newton_vp as gauss_newton_vp
from .api import gradient as gradient
from .api import hessian as hessian
from .api import hvp as hvp
from .api import jvp as jvp
from .api import value_and_gradient as value_and_gradient
from .array_ops import abs2 as abs2
from .array_ops import dot as dot
from .linearize import Linearization as Linearization
from .linearize import linearize as linearize
from .tracked import Tracked as Tracked

__all__ = ["Linearization", "Tracked", "abs2", "dot", "gauss_newton_vp", "gradient", "hessian",
           "hvp", "jvp", "linearize", "value_and_gradient"]
