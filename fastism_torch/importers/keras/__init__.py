"""Keras models (``.h5`` from Keras 2/3, ``.keras``, SavedModel folders, ``keras.Model`` objects) -> FastISM.

TensorFlow never enters this process: the Keras -> ONNX export (tf2onnx) and Keras's own naive ISM run in a
subprocess (:mod:`._keras_worker`).  Keras 3 is tried first; a file Keras 3 cannot load (a Keras 2 ``.h5``, a
SavedModel folder) is retried with tf-keras (``TF_USE_LEGACY_KERAS=1``).  The ONNX file, its sidecar
``meta.json`` and Keras's naive-ISM check results are cached on disk, keyed by the model file's content hash
and the options, under ``cache_dir``, ``$FASTISM_TORCH_CACHE`` or ``~/.cache/fastism_torch``.

``early_stop_layers`` may name Keras layers: each is mapped to the fx nodes converted from that layer's
TensorFlow name scope (recorded by the worker while tracing).  Every converted op is analysed by the
change-range rules like any PyTorch op (a custom layer made of supported ops runs windowed); an op that becomes
a stop point (RNNs, attention, ...) is named in the warning by its Keras layer: from there the model runs in
full.  Recurrent layers (``LSTM``, ``GRU``, ``SimpleRNN``, ``Bidirectional``) are exported
unrolled over the sequence length (tf2onnx writes them as ONNX ``Loop``/``LSTM``, which onnx2torch cannot
convert).  A Keras 3 ``Conv1D(groups > 1)`` is traced without the XLA call Keras 3 wraps it in on CPU.

Modules: :mod:`.scan` (the model's config without TensorFlow; the ``Lambda`` refusal), :mod:`.jobs` (the
worker subprocess), :mod:`.export` (Keras -> ONNX, cached), :mod:`.oracle` (Keras's own naive ISM and the
comparison with it), :mod:`.api` (:func:`from_keras`).
"""
from .api import from_keras
from .export import KerasExport, export_keras, export_keras_many
from .jobs import WorkerFailed, run_jobs
from .oracle import (
           check_against_keras,
           check_request,
           compare_with_keras,
           keras_naive_ism,
           keras_naive_ism_many,
)

__all__ = ["from_keras", "keras_naive_ism", "keras_naive_ism_many", "export_keras", "export_keras_many",
           "KerasExport", "check_request", "compare_with_keras", "check_against_keras", "run_jobs",
           "WorkerFailed"]

_SUPPORTED_LAYERS = frozenset({
    "InputLayer", "Functional", "Sequential", "Model",
    "Conv1D", "Conv2D", "Convolution1D", "Conv1DTranspose", "Conv2DTranspose", "SeparableConv1D",
    "DepthwiseConv1D", "Dense", "EinsumDense",
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
    "BatchNormalization", "LayerNormalization",
    "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPool1D", "AveragePooling1D", "AvgPool1D", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAvgPool1D", "GlobalMaxPooling1D", "GlobalMaxPool1D",
    "Flatten", "Reshape", "Permute", "Cropping1D", "ZeroPadding1D", "RepeatVector",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "TFOpLambda", "SlicingOpLambda", "Lambda",
})


def __getattr__(name):
    """``SUPPORTED_LAYERS`` (deprecated, removed in the next release): the Keras layer classes the engine used to
    accept by name.  Every converted op is now analysed by the rules, whatever its layer."""
    if name == "SUPPORTED_LAYERS":
        import warnings
        warnings.warn("fastism_torch.importers.keras.SUPPORTED_LAYERS is deprecated and unused: every converted op is "
                      "analysed by the change-range rules, whatever its Keras layer", DeprecationWarning, stacklevel=2)
        return _SUPPORTED_LAYERS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
