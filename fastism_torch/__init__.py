"""fastism_torch: fast, exact in-silico saturation mutagenesis (ISM) for sequence models.

Public API::

    ism = fastism_torch.FastISM(model, seq_len=1000)     # nn.Module taking (N, 4, L)
    out = ism(seqs, replace_with=0)                      # (N, n_ranges, *output_shape)
    sat = ism.saturation_mutagenesis(seqs)               # (N, 4, L, *output_shape)
    ref = fastism_torch.NaiveISM(model, seq_len=1000)    # same call API, the oracle
    pw = ism.pairwise(seqs, 100, 150)                    # (N, 50, 4, 50, 4, *output_shape) double mutants
    eps = fastism_torch.epistasis(pw, single, reference) # y(ij) - y(i) - y(j) + y(ref)
    dm = fastism_torch.dependency_map(model, seqs, start=100, end=150)   # tangermeme's, (N, L, 50)
    y = ism.multi_edits(seqs, [[(100, 2), (140, 0)], [(200, "TGATAA"), (260, "CACGTG")]], alphabet="ACGT")
                                                         # (N, 2, *output_shape): edits of several windows

    ism = fastism_torch.from_keras("model.h5")           # Keras 2/3 files, SavedModel, keras.Model
    ism = fastism_torch.from_onnx("model.onnx")

    attr = fastism_torch.saturation_mutagenesis(model, X)  # tangermeme 1.6's call and results (see .compat)
"""
from .compat import saturation_mutagenesis
from .dependency import dependency_map
from .fast import FastISM
from .naive import NaiveISM
from .multi import multi_edits
from .pairwise import epistasis, pairwise

__version__ = "0.1.0"


def from_keras(*args, **kwargs):
    """Build a :class:`FastISM` from a Keras model; see :func:`fastism_torch.importers.keras.from_keras`."""
    from .importers.keras import from_keras as _from_keras
    return _from_keras(*args, **kwargs)


def from_onnx(*args, **kwargs):
    """Build a :class:`FastISM` from an ONNX file; see :func:`fastism_torch.importers.onnx.from_onnx`."""
    from .importers.onnx import from_onnx as _from_onnx
    return _from_onnx(*args, **kwargs)


__all__ = ["FastISM", "NaiveISM", "dependency_map", "epistasis", "from_keras", "from_onnx", "multi_edits",
           "pairwise", "saturation_mutagenesis", "__version__"]
