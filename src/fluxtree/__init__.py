"""fluxtree: Functors.jl, Optimisers.jl and Flux model utilities for Python.

>>> import fluxtree as ft
>>> ft.fmap(lambda v: v + 1, {"a": 1, "b": (2, 3)})
{'a': 2, 'b': (3, 4)}
"""
from . import autodiff as autodiff
from . import device as device
from . import distributed as distributed
from . import losses as losses
from . import nn as nn
from . import optimize as optimize
from .autodiff import abs2 as abs2
from .autodiff import dot as dot
from .autodiff import gauss_newton_vp as gauss_newton_vp
from .autodiff import gradient as gradient
from .autodiff import hessian as hessian
from .autodiff import hvp as hvp
from .autodiff import jvp as jvp
from .autodiff import linearize as linearize
from .autodiff import value_and_gradient as value_and_gradient
from .data import DataLoader as DataLoader
from .device import NoGPUWarning as NoGPUWarning
from .device import cpu as cpu
from .device import gpu as gpu
from .distributed import allreduce_ as allreduce_
from .distributed import bcast_ as bcast_
from .flat import AliasWarning as AliasWarning
from .flat import Restructure as Restructure
from .flat import destructure as destructure
from .flat import isnumeric as isnumeric
from .flat import restructure as restructure
from .flat import trainable as trainable
from .flat import trainables as trainables
from .functors import AbstractWalk as AbstractWalk
from .functors import CachedWalk as CachedWalk
from .functors import DefaultWalk as DefaultWalk
from .functors import ExcludeWalk as ExcludeWalk
from .functors import KeyPath as KeyPath
from .functors import StructuralWalk as StructuralWalk
from .functors import children as children
from .functors import execute as execute
from .functors import fcollect as fcollect
from .functors import fleaves as fleaves
from .functors import fmap as fmap
from .functors import fmap_with_path as fmap_with_path
from .functors import fmapstructure as fmapstructure
from .functors import fmapstructure_with_path as fmapstructure_with_path
from .functors import functor as functor
from .functors import getkeypath as getkeypath
from .functors import haskeypath as haskeypath
from .functors import isleaf as isleaf
from .functors import leaf as leaf
from .functors import modules as modules
from .functors import register as register
from .functors import usecache as usecache
from .io import load as load
from .io import loadmodel_ as loadmodel_
from .io import save as save
from .io import state as state
from .nn import BatchNorm as BatchNorm
from .nn import Chain as Chain
from .nn import Dense as Dense
from .nn import Dropout as Dropout
from .nn import elu as elu
from .nn import gelu as gelu
from .nn import glorot_normal as glorot_normal
from .nn import glorot_uniform as glorot_uniform
from .nn import identity as identity
from .nn import leakyrelu as leakyrelu
from .nn import ones32 as ones32
from .nn import relu as relu
from .nn import sigmoid as sigmoid
from .nn import softplus as softplus
from .nn import swish as swish
from .nn import tanh as tanh
from .nn import testmode_ as testmode_
from .nn import trainmode_ as trainmode_
from .nn import zeros32 as zeros32
from .precision import f16 as f16
from .precision import f32 as f32
from .precision import f64 as f64

__version__ = "0.1.0"
