"""Keras test models: the original fastISM test matrix.  Imported ONLY by the Keras worker subprocess
(``python -m fastism_torch.importers._keras_worker build --source tests/_keras_models.py:<fn>``): it imports
TensorFlow, which must never enter the pytest process.  ``tf.keras`` is Keras 3, or tf-keras under
``TF_USE_LEGACY_KERAS=1``, so every model can be saved both ways.
"""
import os

import tensorflow as tf

K = tf.keras
L_ = K.layers


def conv_seq(L=100):
    """Sequential: conv, pooling, valid conv, flatten, dense."""
    return K.Sequential([
        K.Input((L, 4)),
        L_.Conv1D(10, 7, padding="same", activation="relu", name="c1"),
        L_.MaxPooling1D(2, name="mp1"),
        L_.Conv1D(8, 3, padding="valid", name="c2"),
        L_.Activation("relu"),
        L_.Flatten(),
        L_.Dense(3, name="out"),
    ])


def skip(L=100):
    """Functional with skip connections, BN, dilation, concatenation, average pooling, global pooling."""
    x0 = K.Input((L, 4))
    x = L_.Conv1D(12, 5, padding="same", name="c1")(x0)
    x = L_.BatchNormalization(name="bn1")(x)
    x = L_.ReLU()(x)
    y = L_.Conv1D(12, 3, padding="same", dilation_rate=2, activation="relu", name="c2")(x)
    x = L_.Add(name="add1")([x, y])
    z = L_.Conv1D(6, 4, padding="same", activation="elu", name="c3")(x)      # even kernel, 'same'
    x = L_.Concatenate(name="cat")([x, z])
    x = L_.AveragePooling1D(2, name="ap")(x)
    x = L_.Conv1D(8, 3, padding="valid", activation="sigmoid", name="c4")(x)
    x = L_.GlobalAveragePooling1D()(x)
    return K.Model(x0, L_.Dense(2, name="out")(x))


def multi_output(L=100):
    """Two outputs: a per-position profile (no flatten) and a max-pooled scalar."""
    x0 = K.Input((L, 4))
    x = L_.Conv1D(16, 9, padding="same", activation="relu", name="c1")(x0)
    x = L_.Conv1D(16, 3, padding="same", activation="relu", dilation_rate=4, name="c2")(x)
    prof = L_.Conv1D(2, 5, padding="same", name="profile")(x)
    cnt = L_.Dense(1, name="count")(L_.GlobalMaxPooling1D()(x))
    return K.Model(x0, [prof, cnt])


def nested(L=100):
    """A Sequential block used twice inside a functional model, plus a nested functional head."""
    block = K.Sequential([K.Input((L, 8)), L_.Conv1D(8, 3, padding="same", activation="relu", name="bc")],
                         name="block")
    hin = K.Input((L // 2, 8))
    head = K.Model(hin, L_.Dense(1, name="hd")(L_.Flatten()(L_.Conv1D(4, 3, name="hc")(hin))), name="head")
    x0 = K.Input((L, 4))
    x = L_.Conv1D(8, 5, padding="same", name="c1")(x0)
    x = block(x)
    x = L_.MaxPooling1D(2)(x)
    return K.Model(x0, head(x))


def extra_input(L=100):
    """Sequence plus a non-sequence input (sequence second, like bias tracks first)."""
    bias = K.Input((3,), name="bias")
    x0 = K.Input((L, 4), name="seq")
    x = L_.Conv1D(8, 7, padding="same", activation="relu", name="c1")(x0)
    x = L_.MaxPooling1D(4)(x)
    x = L_.Flatten()(x)
    x = L_.Concatenate()([x, bias])
    return K.Model([bias, x0], L_.Dense(2, name="out")(x))


def cropping(L=100):
    """Valid convs whose branches are cropped to match (like bpnet_dense), then a profile and a count."""
    x0 = K.Input((L, 4))
    a = L_.Conv1D(8, 5, padding="valid", activation="relu", name="c1")(x0)          # L-4
    b = L_.Conv1D(8, 3, padding="valid", activation="relu", dilation_rate=2, name="c2")(a)   # L-8
    a = L_.Cropping1D(2, name="crop1")(a)
    x = L_.Add()([a, b])
    x = L_.Cropping1D((3, 5), name="crop2")(x)
    prof = L_.Conv1D(1, 7, padding="valid", name="profile")(x)
    return K.Model(x0, [L_.Flatten()(prof), L_.Dense(1)(L_.GlobalAveragePooling1D()(x))])


def lambda_model(L=50):
    x0 = K.Input((L, 4))
    x = L_.Conv1D(4, 3, padding="same", name="c1")(x0)
    x = L_.Lambda(lambda t: t * 2.0, name="double")(x)
    return K.Model(x0, L_.Dense(1)(L_.Flatten()(x)))


def lambda_marker(L=20, marker="lambda_ran"):
    """A Lambda layer whose code (a Python lambda, stored as bytecode) leaves a file behind when it runs: shows
    whether loading ran code from the file."""
    x0 = K.Input((L, 4))
    touch = L_.Lambda(lambda t: (__import__("pathlib").Path(marker).touch(), t * 2.0)[1], name="touch")
    x = touch(L_.Conv1D(2, 3, padding="same", name="c1")(x0))
    return K.Model(x0, L_.Dense(1)(L_.Flatten()(x)))


def no_sequence():
    x0 = K.Input((10,))
    return K.Model(x0, L_.Dense(1)(x0))


class Scale(L_.Layer):
    """A custom layer (unknown to the fast engine)."""

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


def custom_layer(L=60):
    x0 = K.Input((L, 4))
    x = L_.Conv1D(6, 5, padding="same", activation="relu", name="c1")(x0)
    x = Scale(name="scale")(x)
    x = L_.Conv1D(4, 3, padding="same", name="c2")(x)
    return K.Model(x0, L_.Dense(1)(L_.Flatten()(x)))


def rnn(L=40):
    """An LSTM (exported unrolled: a stop point with a warning)."""
    x0 = K.Input((L, 4))
    x = L_.Conv1D(4, 3, padding="same", name="c1")(x0)
    x = L_.LSTM(5, name="lstm")(x)
    return K.Model(x0, L_.Dense(1)(x))


def zoo(L=96):
    """Many more layer kinds in one model: causal/strided/separable/depthwise convs, 'same' pooling with even
    windows, Conv1DTranspose, per-position Dense, LayerNormalization, padding, permute, and activations."""
    x0 = K.Input((L, 4))
    x = L_.Conv1D(8, 4, padding="causal", activation="swish", name="causal")(x0)
    x = L_.ZeroPadding1D((2, 1), name="zpad")(x)
    x = L_.Conv1D(8, 4, strides=1, padding="valid", name="c_valid")(x)                       # back to L
    x = L_.LeakyReLU(negative_slope=0.1) if hasattr(L_.LeakyReLU(), "negative_slope") else L_.LeakyReLU(0.1)
    x = x(L_.SeparableConv1D(8, 5, padding="same", name="sep")(L_.Conv1D(8, 1, name="c1x1")(x0)))
    y = L_.DepthwiseConv1D(3, padding="same", name="dw")(x)
    x = L_.Multiply(name="mul")([x, L_.Activation("sigmoid")(y)])
    x = L_.MaxPooling1D(2, padding="same", name="mp_same")(x)                                 # L/2
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":       # tf-keras's folds the batch into a shape: unsupported
        x = L_.LayerNormalization(name="ln")(x)
    x = L_.Dense(6, activation="gelu", name="dense_pos")(x)                                   # per position
    x = L_.Conv1D(6, 3, strides=2, padding="same", name="strided")(x)                        # L/4
    x = L_.Conv1DTranspose(4, 4, strides=1, padding="same", name="convT")(x)
    x = L_.AveragePooling1D(2, padding="same", name="ap_same")(x)                             # L/8
    x = L_.Permute((2, 1), name="perm")(x)
    x = L_.Permute((2, 1), name="perm_back")(x)
    x = L_.Softmax(axis=-1, name="softmax")(x)
    x = L_.Reshape((-1,), name="flat")(x)
    return K.Model(x0, L_.Dense(2, name="out")(x))


def gelu_pool(L=60):
    """Keras 3's exact GELU (ONNX ``Erfc``) before a pooling layer (issue 11's smallest repro)."""
    return K.Sequential([
        K.Input((L, 4)),
        L_.Conv1D(8, 5, activation="gelu", name="c1"),
        L_.MaxPooling1D(2, name="mp1"),
        L_.Flatten(),
        L_.Dense(2, name="out"),
    ])


def grouped_conv(L=60):
    """Grouped and depthwise ``Conv1D(groups > 1)`` (Keras 3 runs them through XLA on CPU)."""
    x0 = K.Input((L, 4))
    x = L_.Conv1D(8, 5, padding="same", name="c1")(x0)
    x = L_.Conv1D(8, 3, padding="same", groups=4, activation="relu", name="grouped")(x)
    x = L_.Conv1D(8, 3, padding="valid", dilation_rate=2, groups=8, name="depthwise")(x)
    x = L_.MaxPooling1D(2, name="mp")(x)
    return K.Model(x0, L_.Dense(2, name="out")(L_.Flatten()(x)))


def recurrent(L=40):
    """A Bidirectional LSTM returning sequences, then a GRU: a stop point at the first recurrent layer."""
    x0 = K.Input((L, 4))
    x = L_.Conv1D(6, 5, padding="same", activation="relu", name="c1")(x0)
    x = L_.MaxPooling1D(2, name="mp1")(x)
    x = L_.Bidirectional(L_.LSTM(4, return_sequences=True), name="bilstm")(x)
    x = L_.GRU(3, name="gru")(x)
    return K.Model(x0, L_.Dense(2, name="out")(x))


def keras3_layers(L=48):
    """More of Keras 3's standard layers in one model: causal dilated and strided grouped convs, SiLU/softplus/
    exponential/GELU activations, pooling after each, TimeDistributed(Dense) (a stop point), Add, BatchNorm,
    ZeroPadding/Cropping, LayerNormalization."""
    x0 = K.Input((L, 4))
    x = L_.Conv1D(8, 4, padding="causal", dilation_rate=2, activation="silu", name="causal")(x0)
    x = L_.AveragePooling1D(2, name="ap1")(x)
    x = L_.Conv1D(8, 3, strides=2, padding="same", groups=2, activation="softplus", name="grouped_strided")(x)
    x = L_.MaxPooling1D(2, padding="same", name="mp1")(x)
    y = L_.TimeDistributed(L_.Dense(8, activation="exponential"), name="td")(x)
    x = L_.Add(name="add")([x, y])
    x = L_.BatchNormalization(name="bn")(x)
    x = L_.Activation("gelu", name="gelu")(x)
    x = L_.MaxPooling1D(2, name="mp2")(x)
    x = L_.ZeroPadding1D(1, name="zpad")(x)
    x = L_.Cropping1D((2, 0), name="crop")(x)
    x = L_.LayerNormalization(name="ln")(x)
    return K.Model(x0, L_.Dense(2, name="out")(L_.Flatten()(x)))
