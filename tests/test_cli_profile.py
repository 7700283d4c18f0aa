"""Profile models (bpnet-lite's BPNet and ChromBPNet, small configurations) through the command line with
no options: per-head counts and profile scores equal the reductions computed by hand from naive ISM; the
full ISM tensor only on request, behind the size guard; chrombpnet-layout files per head."""
import importlib.util
import os
import textwrap

import h5py
import numpy as np
import pytest

from fastism_torch import NaiveISM
from fastism_torch.cli import main

from _cli_helpers import random_seqs, write_fasta, write_model

pytest.importorskip("bpnetlite")

L, N = 160, 3

_REINIT = '''
def _reinit(m):
    """Kaiming-scaled weights and small biases, seeded: mutations move the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv1d, torch.nn.Linear)):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / mod.weight[0].numel()) ** 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
    return m.eval()
'''

BPNET = textwrap.dedent('''
    import torch
    from bpnetlite import BPNet
''') + _REINIT + textwrap.dedent('''
    def make_model():
        """profile logits (N, 2, L - 106), log counts (N, 1)."""
        return _reinit(BPNet(n_filters=16, n_layers=2, n_outputs=2, n_control_tracks=0, verbose=False))
''')

CHROMBPNET = textwrap.dedent('''
    import torch
    from bpnetlite import BPNet, ChromBPNet
''') + _REINIT + textwrap.dedent('''
    def make_model():
        """profile logits (N, 1, L - 106), log counts (N, 1): bias + accessibility BPNets."""
        torch.manual_seed(0)
        bias = BPNet(n_filters=8, n_layers=1, n_outputs=1, n_control_tracks=0, verbose=False)
        acc = BPNet(n_filters=16, n_layers=2, n_outputs=1, n_control_tracks=0, verbose=False)
        return _reinit(ChromBPNet(bias, acc))
''')


def _load(path):
    spec = importlib.util.spec_from_file_location("_profile_model_" + os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_model()


def _by_hand(module, x):
    """Counts and profile ISM scores (N, 4, L, T) from naive ISM, by the formulas: the counts output;
    sum(softmax(logits) * logits) over the profile positions, per task; mutant - reference, centred."""
    eng = NaiveISM(module, seq_len=L)
    prof, counts = [np.asarray(o, dtype=np.float64) for o in eng.saturation_mutagenesis(x)]   # (N,4,L,t,P) (N,4,L,1)
    prof_ref, counts_ref = [np.asarray(o, dtype=np.float64) for o in eng.predict(x)]

    def weighted(p):
        e = np.exp(p - p.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True) * p).sum(-1)

    out = {}
    for name, mut, ref in (("counts", counts, counts_ref), ("profile", weighted(prof), weighted(prof_ref))):
        d = mut - ref[:, None, None]
        out[name] = d - d.mean(1, keepdims=True)
    return out, (prof, counts)


def _run(tmp_path, source, name, *extra):
    model = write_model(tmp_path, source, name)
    fa = write_fasta(tmp_path / "s.fa", random_seqs(N, L, seed=4))
    prefix = str(tmp_path / "out" / "run")
    assert main(["ism", "-m", f"{model}:make_model", "-s", fa, "-o", prefix, *extra]) == 0
    from fastism_torch import inputs
    return _load(model), inputs.load_sequences(fa).onehot.astype(np.float32), prefix, model, fa


def _check_heads(prefix, want, x):
    with h5py.File(prefix + ".h5") as f:
        assert sorted(set(f) - {"chrom", "start", "end"}) == ["counts", "done", "index", "names", "profile", "seqs"]
        for head, w in want.items():
            np.testing.assert_allclose(f[f"{head}/ism"][...], w, rtol=1e-4, atol=1e-5, err_msg=head)
            assert f[f"{head}/ism"].compression == "gzip"
            attr = np.load(f"{prefix}.{head}.attr.npz")["arr_0"]
            np.testing.assert_allclose(attr, w.mean(-1), rtol=1e-4, atol=1e-5, err_msg=head)
            np.testing.assert_allclose(np.load(f"{prefix}.{head}.proj.npz")["arr_0"], w.mean(-1) * x,
                                       rtol=1e-4, atol=1e-5, err_msg=head)
            assert np.abs(w).max() > 1e-3           # the mutations move this head


def test_bpnet_defaults_to_counts_and_profile_scores(tmp_path, capsys):
    module, x, prefix, model, fa = _run(tmp_path, BPNET, "bpnet_model.py")
    want, (prof, counts) = _by_hand(module, x)
    assert want["counts"].shape == (N, 4, L, 1) and want["profile"].shape == (N, 4, L, 2)
    _check_heads(prefix, want, x)
    err = capsys.readouterr().err
    assert "counts/ism (3, 4, 160, 1), profile/ism (3, 4, 160, 2)" in err and "wrote" in err
    # the full tensor only on request, behind the size guard: one line naming the size and the flag
    full = str(tmp_path / "full" / "run")
    argv = ["ism", "-m", f"{model}:make_model", "-s", fa, "-o", full, "--reduction", "none"]
    assert main(argv + ["--max-output-gb", "0.0005"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "up to 873.0 kB" in err and "over the limit of 0.0005 GB" in err
    assert "pass --max-output-gb 0.00088 to write them" in err
    assert not os.path.exists(tmp_path / "full")                   # no folder left behind
    assert main(argv + ["--max-output-gb", "0.00088"]) == 0
    with h5py.File(full + ".h5") as f:
        T = 2 * prof.shape[-1] + 1
        assert f["ism"].shape == (N, 4, L, T)
        flat = np.concatenate([prof.reshape(N, 4, L, -1), counts], -1)      # every output value a target
        np.testing.assert_allclose(f["ism"][...], flat - flat.mean(1, keepdims=True), rtol=1e-4, atol=1e-4)
        assert f["y_ref"].shape == (N, T)


def test_chrombpnet_per_head_scores_and_chrombpnet_files(tmp_path):
    module, x, prefix, _, _ = _run(tmp_path, CHROMBPNET, "chrombpnet_model.py", "--format", "chrombpnet")
    want, _ = _by_hand(module, x)
    assert want["profile"].shape == (N, 4, L, 1)
    _check_heads(prefix, want, x)
    for head, w in want.items():
        with h5py.File(f"{prefix}.{head}_scores.h5") as f:
            np.testing.assert_array_equal(f["raw/seq"][...], x)
            np.testing.assert_allclose(f["shap/seq"][...], w.mean(-1), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(f["projected_shap/seq"][...], w.mean(-1) * x, rtol=1e-4, atol=1e-5)
    assert not os.path.exists(prefix + ".ism_scores.h5")
    assert main(["plot", prefix + ".h5", "--head", "profile", "-o", str(tmp_path / "p.png")]) == 0
    assert main(["plot", prefix + ".h5", "--head", "jsd", "-o", str(tmp_path / "p.png")]) == 1
