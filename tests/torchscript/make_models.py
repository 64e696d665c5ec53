"""Makes the TorchScript models the tests train and refuse, with Debian's
python3-torch (the PyTorch of libtorch-dev).

    make_models.py fixtures OUT_DIR        every fixture below
    make_models.py twin STATE_DICT OUT     CONV_OMNIGLOT as TorchScript, theta from `reptile export`

Fixtures (5-way 28x28 grey unless said):
    sine_mlp.pt          an MLP for sine regression
    conv_bn_running.pt   a small conv net whose batch norm keeps running statistics (buffers)
    conv_bn_other.pt     the same net, initialised from another seed
    not_torchscript.pt   a state dict saved with torch.save, not a module
    wrong_ways.pt        3 outputs where the task has 5 ways
    float64.pt           double-precision parameters
    no_parameters.pt     a module without parameters
    bad_forward.pt       a first convolution that wants 3 input channels
"""
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import reptile_models  # noqa: E402


class SmallConv(nn.Module):
    def __init__(self, in_channels=1, ways=5, running_stats=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(8, track_running_stats=running_stats)
        self.head = nn.Linear(8 * 14 * 14, ways)

    def forward(self, x):
        return self.head(F.relu(self.norm(self.conv(x))).flatten(1))


class Sine(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(1, 16)
        self.b = nn.Linear(16, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class NoParameters(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :5]


def fixtures(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(1)
    torch.jit.save(torch.jit.script(Sine()), os.path.join(out, "sine_mlp.pt"))
    torch.jit.save(torch.jit.script(SmallConv()), os.path.join(out, "conv_bn_running.pt"))
    torch.jit.save(torch.jit.script(SmallConv()), os.path.join(out, "conv_bn_other.pt"))
    torch.save(SmallConv().state_dict(), os.path.join(out, "not_torchscript.pt"))
    torch.jit.save(torch.jit.script(SmallConv(ways=3)), os.path.join(out, "wrong_ways.pt"))
    torch.jit.save(torch.jit.script(SmallConv().double()), os.path.join(out, "float64.pt"))
    torch.jit.save(torch.jit.script(NoParameters()), os.path.join(out, "no_parameters.pt"))
    torch.jit.save(torch.jit.script(SmallConv(in_channels=3)), os.path.join(out, "bad_forward.pt"))


def twin(state_dict, out):
    theta = torch.load(state_dict)
    ways = theta["classifier.weight"].shape[0]
    model = reptile_models.conv_omniglot(ways)
    model.load_state_dict(theta)
    torch.jit.save(torch.jit.script(model), out)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "twin":
        twin(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
