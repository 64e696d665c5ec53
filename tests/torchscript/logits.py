"""Prints what PyTorch computes for a file `reptile export` wrote, for the
tests to compare with reptile's own numbers.

    logits.py torchscript FILE SHAPE...          torch.jit.load, then forward
    logits.py state_dict FILE WAYS SHAPE...      torch.load into reptile_models.conv_omniglot(WAYS)
    logits.py tensors FILE                       torch.load: each key, its shape and sum
    logits.py compare FILE FILE                  two state dicts: the largest ||a - b|| / ||a|| of a tensor

The input is torch.linspace(0, 1, numel).reshape(SHAPE), as the tests make
it; the module runs in training mode (batch statistics), as reptile runs it.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import reptile_models  # noqa: E402


def linspace_input(shape):
    numel = 1
    for d in shape:
        numel *= d
    return torch.linspace(0, 1, numel).reshape(shape)


def main(argv):
    kind, path = argv[1], argv[2]
    if kind == "compare":
        a, b = torch.load(path), torch.load(argv[3])
        print(repr(max(((a[k] - b[k]).norm() / a[k].norm()).item() for k in a)))
        return
    if kind == "tensors":
        for key, value in torch.load(path).items():
            print(key, list(value.shape), repr(float(value.double().sum())))
        return
    if kind == "torchscript":
        model, shape = torch.jit.load(path), [int(d) for d in argv[3:]]
    else:
        model = reptile_models.conv_omniglot(int(argv[3]))
        model.load_state_dict(torch.load(path))
        shape = [int(d) for d in argv[4:]]
    model.train()
    with torch.no_grad():
        out = model(linspace_input(shape))
    print(" ".join(repr(float(v)) for v in out.flatten()))


if __name__ == "__main__":
    main(sys.argv)
