"""The built-in networks of reptile as PyTorch modules.

Their parameter names are the keys of the state dict that
`reptile export --format state_dict` writes, so a trained model loads with

    model = reptile_models.conv_omniglot(ways=5)
    model.load_state_dict(torch.load("model.pt"))

Batch norm normalises with each batch's own statistics and keeps no running
averages, as in the paper's code: classify a query together with its support
set (or a batch of queries), as `reptile eval` does.
"""
import torch
from torch import nn
import torch.nn.functional as F


class SineMlp(nn.Module):
    """MLP_SINE: 1 -> hidden -> hidden -> 1, tanh."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.hidden1 = nn.Linear(1, hidden)
        self.hidden2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.hidden1(x))
        x = torch.tanh(self.hidden2(x))
        return self.out(x)


class ConvClassifier(nn.Module):
    """CONV_OMNIGLOT and CONV_MINIIMAGENET: four blocks of 3x3 convolution,
    batch norm and ReLU (Mini-ImageNet: with 2x2 max-pooling that keeps a last
    odd row and column), then a linear classifier."""

    def __init__(self, in_channels: int, image_size: int, filters: int, pool: bool, ways: int):
        super().__init__()
        self.pool = pool
        size = image_size
        for i in range(4):
            conv = nn.Conv2d(in_channels if i == 0 else filters, filters, 3, stride=1 if pool else 2, padding=1)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"norm{i}", nn.BatchNorm2d(filters, track_running_stats=False))
            size = (size + 1) // 2
        self.classifier = nn.Linear(filters * size * size, ways)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2, 2, ceil_mode=True) if self.pool else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pooled(F.relu(self.norm0(self.conv0(x))))
        x = self.pooled(F.relu(self.norm1(self.conv1(x))))
        x = self.pooled(F.relu(self.norm2(self.conv2(x))))
        x = self.pooled(F.relu(self.norm3(self.conv3(x))))
        return self.classifier(x.flatten(1))


def conv_omniglot(ways: int, image_size: int = 28, in_channels: int = 1) -> ConvClassifier:
    return ConvClassifier(in_channels, image_size, 64, pool=False, ways=ways)


def conv_miniimagenet(ways: int, image_size: int = 84, in_channels: int = 3) -> ConvClassifier:
    return ConvClassifier(in_channels, image_size, 32, pool=True, ways=ways)
