"""Set-up cost: building a FastISM engine and running it does not import ``torch._dynamo`` (0.6-1.3 s on the
CI machine), which PyTorch's Python meta kernels and custom ops would otherwise import on their first call;
what the deferral does is undone afterwards (checked in fresh processes: the test process has imported it)."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("model", ["bpnet", "basset"])
def test_fastism_does_not_import_dynamo(model):
    out = _run(f"""
        import sys, torch
        import fastism_torch as ft
        from fastism_torch import models
        assert "torch._dynamo" not in sys.modules
        m = models.{model}(seq_len=200, seed=0)
        x = models.random_onehot(2, 200, seed=1)
        fast = ft.FastISM(m, 200)
        got = fast.saturation_mutagenesis(x)
        print("dynamo imported:", "torch._dynamo" in sys.modules)
        want = ft.NaiveISM(m, 200).saturation_mutagenesis(x)
        for a, b in zip(got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    """)
    assert "dynamo imported: False" in out


def test_deferral_is_undone():
    """Inside the block a stand-in answers ``disable``; after it the real module is imported on demand, the
    functions answered by the stand-in get the real wrapper, and torch.compile works."""
    out = _run("""
        import sys, torch
        from fastism_torch.deferred_dynamo import dynamo_import_deferred, _DynamoStub
        a = torch.empty(3, 4, device="meta")
        with dynamo_import_deferred():
            stub = sys.modules["torch._dynamo"]
            assert isinstance(stub, _DynamoStub)
            assert (a + a).shape == (3, 4) and torch.relu(a).shape == (3, 4)
            assert stub.seeded
            with dynamo_import_deferred():            # nested: a no-op
                assert sys.modules["torch._dynamo"] is stub
        assert "torch._dynamo" not in sys.modules
        assert all(getattr(fn, "__dynamo_disable", None) is None for fn in stub.seeded)
        assert (a + a).shape == (3, 4)               # the real torch._dynamo.disable now
        assert "torch._dynamo" in sys.modules and not isinstance(sys.modules["torch._dynamo"], _DynamoStub)
        assert all(getattr(fn, "__dynamo_disable", None) not in (None, fn) for fn in stub.seeded[:1])
        f = torch.compile(lambda x: torch.relu(x) + 1, backend="eager")
        assert torch.equal(f(torch.ones(3)), torch.full((3,), 2.0))
        print("ok")
    """)
    assert "ok" in out


def test_stub_forwards_other_attributes():
    out = _run("""
        import sys, torch
        from fastism_torch.deferred_dynamo import dynamo_import_deferred, _DynamoStub
        with dynamo_import_deferred():
            import torch._dynamo
            reset = torch._dynamo.reset                   # anything but disable: the real module
            assert not isinstance(sys.modules["torch._dynamo"], _DynamoStub)
        assert torch._dynamo.reset is reset
        print("ok")
    """)
    assert "ok" in out


def test_submodules_import_inside_the_block():
    """A model (or PyTorch) importing ``torch._dynamo``'s submodules inside the block gets the real ones."""
    out = _run("""
        import sys, torch
        from fastism_torch.deferred_dynamo import dynamo_import_deferred, _DynamoStub
        with dynamo_import_deferred():
            from torch._dynamo.utils import counters
            import torch._dynamo.config
            assert not isinstance(sys.modules["torch._dynamo"], _DynamoStub)
        assert sys.modules["torch._dynamo.utils"].counters is counters
        print("ok")
    """)
    assert "ok" in out
