"""ResNet-12, the standard few-shot backbone (Oreshkin et al., TADAM, 2018;
Lee et al., MetaOptNet, 2019), as a TorchScript file reptile meta-trains:

    python3 python/resnet12.py --ways 5 --out resnet12.pt
    reptile train --config configs/... model.arch=TORCHSCRIPT model.torchscript_file=resnet12.pt

Four residual blocks of three 3x3 convolutions with batch norm and leaky
ReLU (0.1), a 1x1 convolution on the shortcut and 2x2 max-pooling; widths
64-128-256-512 (about 8M parameters); global average pooling and a linear
classifier. For 84x84 colour images (Mini-ImageNet).
"""
import argparse

import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.conv3 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Conv2d(inputs, outputs, 1, bias=False)
        self.bn_shortcut = nn.BatchNorm2d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.bn_shortcut(self.shortcut(x)), 0.1)
        return F.max_pool2d(out, 2)


class ResNet12(nn.Module):
    def __init__(self, ways: int, channels: int = 3, widths=(64, 128, 256, 512)):
        super().__init__()
        self.block1 = Block(channels, widths[0])
        self.block2 = Block(widths[0], widths[1])
        self.block3 = Block(widths[1], widths[2])
        self.block4 = Block(widths[2], widths[3])
        self.classifier = nn.Linear(widths[3], ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.classifier(x.mean(dim=(2, 3)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = torch.jit.script(ResNet12(args.ways, args.channels))
    torch.jit.save(model, args.out)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters())} parameters")
