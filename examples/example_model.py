"""A small bundled PyTorch model for the example run (``scripts/example.sh``).

``make_model()`` returns a deterministic convolutional model (N, 4, 300) -> (N, 3): three "tasks" whose
first-layer filters are set to match the GATA motif ``AGATAA``, the E-box ``CACGTG`` and an AP-1 site
``TGACTCA``; the other weights come from a seeded initialisation.  No download, no weights file.

The CLI reads the optional module attributes ``SEQ_LEN``, ``LAYOUT`` and ``TARGET_NAMES``.
"""
import torch
from torch import nn

SEQ_LEN = 300
LAYOUT = "NCL"
TARGET_NAMES = ["gata", "ebox", "ap1"]
MOTIFS = ["AGATAA", "CACGTG", "TGACTCA"]


def _pwm_filter(motif: str, width: int) -> torch.Tensor:
    w = torch.full((4, width), -1.0)
    off = (width - len(motif)) // 2
    for i, b in enumerate(motif):
        w[:, off + i] = -1.0
        w["ACGT".index(b), off + i] = 1.0
    w[:, :off] = 0
    w[:, off + len(motif):] = 0
    return w


def make_model(seq_len: int = SEQ_LEN) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    n_filters, width, pool = 8, 9, 4
    model = nn.Sequential(
        nn.Conv1d(4, n_filters, width, padding=width // 2),
        nn.ReLU(),
        nn.MaxPool1d(pool),
        nn.Conv1d(n_filters, n_filters, 5, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(n_filters * (seq_len // pool), len(TARGET_NAMES)),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        conv1, conv2, dense = model[0], model[3], model[6]
        for k, motif in enumerate(MOTIFS):
            conv1.weight[k] = _pwm_filter(motif, width)
            conv1.bias[k] = -(len(motif) - 2.5)          # fires on a match with at most one mismatch
            conv2.weight[k, k, 2] += 1.0                  # carry each motif channel to the next layer
        w = dense.weight.view(len(TARGET_NAMES), n_filters, seq_len // pool)
        for k in range(len(MOTIFS)):
            w[k, k] += 0.3
    return model.eval()
