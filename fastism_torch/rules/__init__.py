"""Per-op change-range rules, one module per op family; importing this package registers them all."""
from . import conv, dense, layout, pointwise, pool, reduce, split  # noqa: F401  (registration side effects)
from .registry import Decision, Read, RuleContext, describe, lookup, register, stop  # noqa: F401
