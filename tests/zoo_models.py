"""The field's own PyTorch genomic models from PyPI, unmodified, in small configurations with random weights.

``ZOO[id]()`` returns ``(model, seq_len, layout, note)``: an eval-mode ``nn.Module`` built from the package's
own class, the sequence length it is tested at, ``"NCL"`` for ``(N, 4, L)`` input or ``"NLC"`` for
``(N, L, 4)``, and a note on what ``forward`` returns. Each package is imported inside its factory, so a
missing one only affects its own entries (``PACKAGES[id]`` names the module to ``importorskip``).
Install them with ``bash scripts/install_zoo.sh .venv/bin/python`` (pinned, ``--no-deps``, torch untouched).

Weights are re-initialised (seeded): Kaiming-normal conv/linear weights, small random biases, non-trivial
BatchNorm running statistics and LayerNorm affines, so that single-base mutations move the outputs.
"""
from __future__ import annotations

import os

import torch
from torch import nn

# transformers (enformer-pytorch, borzoi-pytorch, gReLU) would import TensorFlow when it is installed
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_TORCH", "1")

SEED = 0


def reinit(model: nn.Module, seed: int = SEED) -> nn.Module:
    """Kaiming-scaled weights and non-trivial normalisation statistics, so mutations move the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m.weight.numel():
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.GRU, nn.LSTM)):
                for name, p in m.named_parameters(recurse=False):
                    p.copy_(torch.randn(p.shape, generator=g) * (1.0 / m.hidden_size) ** 0.5
                            if "weight" in name else torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


# ---------------------------------------------------------------------------------------------- bpnet-lite
def bpnetlite_bpnet():
    from bpnetlite import BPNet
    torch.manual_seed(SEED)
    # no control tracks: forward(X, X_ctl=None); trimming = 47 + 2+4+8+16 = 77 on each side
    model = BPNet(n_filters=16, n_layers=4, n_outputs=2, n_control_tracks=0, verbose=False)
    return (reinit(model), 500, "NCL",
            "forward(X, X_ctl=None) -> (profile (N, 2, 346), counts (N, 1)); 'same' convs, crop via "
            "X.shape[2] - trimming; counts = Linear(mean over the cropped trunk +-37)")


def bpnetlite_bpnet_ctl():
    from bpnetlite import BPNet
    torch.manual_seed(SEED)
    # the TF ChIP-seq configuration: 2 stranded control tracks, a second input (EXTRA_INPUTS)
    model = BPNet(n_filters=16, n_layers=4, n_outputs=2, n_control_tracks=2, verbose=False)
    return (reinit(model), 500, "NCL",
            "forward(X, X_ctl) with X_ctl (N, 2, L) -> (profile (N, 2, 346), counts (N, 1)); the control "
            "tracks join the trunk before the profile conv (cat) and the counts (log(sum + 1), cat)")


def bpnetlite_chrombpnet():
    from bpnetlite import BPNet, ChromBPNet
    torch.manual_seed(SEED)
    bias = BPNet(n_filters=8, n_layers=2, n_outputs=1, n_control_tracks=0, verbose=False)
    acc = BPNet(n_filters=16, n_layers=4, n_outputs=1, n_control_tracks=0, verbose=False)
    model = ChromBPNet(bias, acc)
    return (reinit(model), 500, "NCL",
            "forward(X, X_ctl=None) -> (profile (N, 1, 346), counts (N, 1)); two BPNets (bias: 2 layers, "
            "trim 53; accessibility: 4 layers, trim 77), bias profile cropped by shape arithmetic, "
            "counts = log(exp(a) + exp(b))")


# ---------------------------------------------------------------------------------------- chrombpnet-pytorch
def chrombpnet_pytorch():
    from chrombpnet.chrombpnet import ChromBPNet
    from chrombpnet.model_config import ChromBPNetConfig
    torch.manual_seed(SEED)
    # 'valid' convs: 20 + 2*(2+4+8+16) + 74 = 154 positions lost; the bias model is hard-coded (128 filters,
    # 4 layers), the accessibility model is configurable
    cfg = ChromBPNetConfig(out_dim=300, n_filters=16, n_layers=4)
    model = ChromBPNet(cfg)
    return (reinit(model), 500, "NCL",
            "forward(x, **kwargs) -> (profile (N, 300) [squeezed], counts (N, 1)); 'valid' convs with "
            "shape-computed crops, `if x.shape[1] != 4` permute, AdaptiveAvgPool1d counts; bias BPNet "
            "fixed at 128 filters x 4 layers")


# ---------------------------------------------------------------------------------------------------- gReLU
def grelu_dilatedconv():
    from grelu.model.models import DilatedConvModel
    torch.manual_seed(SEED)
    model = DilatedConvModel(n_tasks=2, channels=16, n_conv=4, crop_len="auto", final_pool_func=None)
    return (reinit(model), 500, "NCL",
            "forward(x) -> profile (N, 2, 452); BPNet-like dilated residual trunk, 'auto' crop (24), ConvHead")


def grelu_convmlp():
    from grelu.model.models import ConvMLPModel
    torch.manual_seed(SEED)
    model = ConvMLPModel(seq_len=200, n_tasks=2, stem_channels=16, channel_init=16, n_conv=2,
                         mlp_hidden_size=[8])
    return (reinit(model), 200, "NCL",
            "forward(x) -> (N, 2, 1); residual conv trunk, then einops flatten + MLP head")


def grelu_convgru():
    from grelu.model.models import ConvGRUModel
    torch.manual_seed(SEED)
    model = ConvGRUModel(n_tasks=2, stem_channels=16, channel_init=16, n_conv=2, pool_func="max", pool_size=4,
                         n_gru=1)
    return (reinit(model), 200, "NCL",
            "forward(x) -> (N, 2, 1); conv tower (max-pool 4), bidirectional GRU (einops rearranges), avg pool")


def grelu_convtransformer():
    from grelu.model.models import ConvTransformerModel
    torch.manual_seed(SEED)
    model = ConvTransformerModel(n_tasks=2, stem_channels=16, channel_init=16, n_conv=2, pool_func="max",
                                 pool_size=4, n_transformers=1, key_len=8, value_len=8, n_heads=2,
                                 n_pos_features=4)
    return (reinit(model), 200, "NCL",
            "forward(x) -> (N, 2, 1); conv tower (max-pool 4), 1 relative-position transformer block, avg pool")


def grelu_borzoi():
    from grelu.model.models import BorzoiModel
    torch.manual_seed(SEED)
    # channel counts are rounded to multiples of 32
    model = BorzoiModel(n_tasks=2, stem_channels=16, stem_kernel_size=15, init_channels=32, channels=64,
                        n_conv=4, kernel_size=5, n_transformers=1, key_len=8, value_len=16, n_heads=2,
                        n_pos_features=8, crop_len=2, final_pool_func=None)
    return (reinit(model), 256, "NCL",
            "forward(x) -> (N, 2, 60); conv tower (4 max-pools: 16x), transformer, U-net upsampling x2 (4x), "
            "crop 2")


def grelu_enformer():
    from grelu.model.models import EnformerModel
    torch.manual_seed(SEED)
    # channels: a multiple of 128 (EnformerConvTower rounds to it) whose per-head share divides by 6 (relative
    # position features) -> 384; n_conv=3: 8x attention pooling
    model = EnformerModel(n_tasks=2, n_conv=3, channels=384, n_transformers=1, n_heads=2, key_len=8,
                          crop_len=2, final_pool_func=None)
    return (reinit(model), 256, "NCL",
            "forward(x) -> (N, 2, 28); Enformer stem + conv tower with attention pooling (8x), transformer, crop 2")


# -------------------------------------------------------------------------------------------- enformer-pytorch
def enformer_pytorch():
    from enformer_pytorch import Enformer, EnformerConfig
    torch.manual_seed(SEED)
    cfg = EnformerConfig(dim=48, depth=1, heads=2, attn_dim_key=8, num_downsamples=3, dim_divisible_by=8,
                         target_length=24, output_heads=dict(human=4))
    model = Enformer(cfg)
    return (reinit(model), 256, "NLC",
            "forward(x, target=None, return_corr_coef=False, ..., head=None) -> {'human': (N, 24, 4)}: dict; "
            "input (N, L, 4); attention pooling x3 (8x), 1 transformer block, TargetLengthCrop(24)")


# --------------------------------------------------------------------------------------------- borzoi-pytorch
def borzoi_pytorch():
    from borzoi_pytorch import Borzoi
    from borzoi_pytorch.config_borzoi import BorzoiConfig
    torch.manual_seed(SEED)
    # the conv tower (512..1280 channels) and the heads (1920 -> 7611) are hard-coded; only the transformer
    # (dim, depth, heads, key/value sizes) is configurable. 128x downsampling: L=1024 -> 8 tokens, 32 bins out
    cfg = BorzoiConfig(dim=64, depth=1, heads=2, attn_dim_key=8, attn_dim_value=16, bins_to_return=24)
    model = Borzoi(cfg)
    return (reinit(model), 1024, "NCL",
            "forward(x, is_human=True, ...) -> (N, 7611, 24); fixed 512-1280-channel conv tower, torch.vmap "
            "relative shift in attention, U-net upsampling, TargetLengthCrop(24)")


# -------------------------------------------------------------------------------------------- basenji2-pytorch
def basenji2_pytorch():
    from basenji2_pytorch import Basenji2
    torch.manual_seed(SEED)
    params = {
        "seq_length": 512,
        "target_length": 24,
        "activation": "gelu",
        "norm_type": "batch",
        "bn_momentum": 0.9,
        "trunk": [
            {"name": "conv_block", "filters": 16, "kernel_size": 15, "pool_size": 2},
            {"name": "conv_tower", "filters_init": 16, "filters_mult": 1.25, "kernel_size": 5, "pool_size": 2,
             "repeat": 3},
            {"name": "dilated_residual", "filters": 8, "rate_mult": 1.5, "repeat": 3, "dropout": 0.3,
             "round": True},
            {"name": "Cropping1D", "cropping": 4},
            {"name": "conv_block", "filters": 32, "dropout": 0.05},
        ],
        "head_human": {"name": "final", "units": 4, "activation": "softplus"},
    }
    model = Basenji2(params)
    return (reinit(model), 512, "NCL",
            "forward(x, return_only_embeddings=False) -> (N, 24, 4); 16x max-pool conv tower, dilated "
            "residual blocks, Cropping1d(4), einops Rearrange + Linear head, softplus with in-place clip_")


ZOO = {
    "bpnetlite_bpnet": bpnetlite_bpnet,
    "bpnetlite_bpnet_ctl": bpnetlite_bpnet_ctl,
    "bpnetlite_chrombpnet": bpnetlite_chrombpnet,
    "chrombpnet_pytorch": chrombpnet_pytorch,
    "grelu_dilatedconv": grelu_dilatedconv,
    "grelu_convmlp": grelu_convmlp,
    "grelu_convgru": grelu_convgru,
    "grelu_convtransformer": grelu_convtransformer,
    "grelu_borzoi": grelu_borzoi,
    "grelu_enformer": grelu_enformer,
    "enformer_pytorch": enformer_pytorch,
    "borzoi_pytorch": borzoi_pytorch,
    "basenji2_pytorch": basenji2_pytorch,
}

#: the module each entry needs (for ``pytest.importorskip``)
PACKAGES = {
    "bpnetlite_bpnet": "bpnetlite",
    "bpnetlite_bpnet_ctl": "bpnetlite",
    "bpnetlite_chrombpnet": "bpnetlite",
    "chrombpnet_pytorch": "chrombpnet.chrombpnet",
    "grelu_dilatedconv": "grelu.model.models",
    "grelu_convmlp": "grelu.model.models",
    "grelu_convgru": "grelu.model.models",
    "grelu_convtransformer": "grelu.model.models",
    "grelu_borzoi": "grelu.model.models",
    "grelu_enformer": "grelu.model.models",
    "enformer_pytorch": "enformer_pytorch",
    "borzoi_pytorch": "borzoi_pytorch",
    "basenji2_pytorch": "basenji2_pytorch",
}

#: further model inputs after the sequence, for the entries that take them: ``fn(n, seq_len) -> list``
EXTRA_INPUTS = {
    "bpnetlite_bpnet_ctl": lambda n, length: [
        torch.rand(n, 2, length, generator=torch.Generator().manual_seed(2)) * 3],
}
