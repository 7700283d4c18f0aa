"""Set-up without importing ``torch._dynamo`` (0.6-1.3 s of a fresh process): :func:`dynamo_import_deferred`,
used by the meta trace (:mod:`.capture`) and the edit graph's batch loop (:mod:`.execute`)."""
from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import types

import torch

_DYNAMO = "torch._dynamo"
_deferral = threading.local()


def _real_dynamo():
    stub = sys.modules.get(_DYNAMO)
    if isinstance(stub, _DynamoStub):
        del sys.modules[_DYNAMO]
        if torch.__dict__.get("_dynamo") is stub:
            delattr(torch, "_dynamo")
    return importlib.import_module(_DYNAMO)


class _DynamoStub(types.ModuleType):
    """Stands in for ``torch._dynamo`` while it is not imported (see :func:`dynamo_import_deferred`):
    ``disable(fn, wrapping=False)`` (what ``torch._disable_dynamo`` asks for) gives ``fn`` itself; any other use
    imports the real module and forwards to it."""

    def __init__(self):
        super().__init__(_DYNAMO)
        self.seeded = []
        self.active = True

    def disable(self, fn=None, recursive=True, *args, wrapping=True, **kwargs):
        if self.active and callable(fn) and wrapping is False and not args and not kwargs:
            self.seeded.append(fn)
            return fn
        return _real_dynamo().disable(fn, recursive, *args, wrapping=wrapping, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__") and name != "__path__":      # (__path__: a submodule is being imported)
            raise AttributeError(name)
        return getattr(_real_dynamo(), name)


@contextlib.contextmanager
def dynamo_import_deferred():
    """Run PyTorch's Python meta kernels and custom ops without importing ``torch._dynamo`` (0.6-1.3 s).

    Many of PyTorch's meta kernels (``add``, ``mul``, ``relu``, ``mean``, ``batch_norm``, ``linear``, ...:
    Python references wrapped in ``torch._prims_common.wrappers.elementwise_type_promotion_wrapper``) and
    every ``torch.library.custom_op`` implementation are wrapped in ``torch._disable_dynamo``, whose first call
    imports ``torch._dynamo`` to build ``torch._dynamo.disable(fn)``.  With ``torch._dynamo`` never imported,
    nothing can be compiling, so that wrapper is ``fn`` itself: inside this block a stand-in module answers
    ``disable`` with ``fn`` (anything else it is asked imports the real module), and on exit the stand-in is
    removed and the functions it answered forget the answer (their next call outside builds the real
    wrapper).  A no-op when ``torch._dynamo`` is already imported, and when nested.
    """
    if _DYNAMO in sys.modules or getattr(_deferral, "on", False):
        yield
        return
    stub = _DynamoStub()
    sys.modules[_DYNAMO] = stub
    _deferral.on = True
    try:
        yield
    finally:
        _deferral.on = False
        stub.active = False
        if sys.modules.get(_DYNAMO) is stub:
            del sys.modules[_DYNAMO]
        if torch.__dict__.get("_dynamo") is stub:
            delattr(torch, "_dynamo")
        for fn in stub.seeded:
            if getattr(fn, "__dynamo_disable", None) is fn:
                with contextlib.suppress(AttributeError, TypeError):
                    delattr(fn, "__dynamo_disable")
