"""The bridge to ``scipy.optimize``: exact derivatives for scipy's methods.

``Objective(model, loss, data)`` serves ``fun``, ``jac``, ``hessp`` (and ``hess`` as a
``LinearOperator``) from one recorded forward pass per point; ``minimize(model, loss,
data, method=...)`` runs ``scipy.optimize.minimize`` with it and returns the result and the
fitted model.  See ``docs/scipy.md``.
"""
from .bridge import METHODS as METHODS
from .bridge import minimize as minimize
from .objective import Objective as Objective

__all__ = ["METHODS", "Objective", "minimize"]
