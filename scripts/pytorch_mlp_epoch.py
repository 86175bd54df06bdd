#!/usr/bin/env python3
"""Times dense MLP training epochs in PyTorch on the CPU, for comparison with
`rewire train --method dense` on the same machine.

Same model (784-1000-1000-1000-10, ReLU), batch 128, SGD momentum 0.9, Fashion-MNIST
from data/ (IDX .gz or raw), float32, `torch.set_num_threads(THREADS)`. Reports the wall
time of each epoch's training steps (evaluation excluded, as in rewire's epoch time) and
the test accuracy after each epoch.

    python3 scripts/pytorch_mlp_epoch.py [EPOCHS] [THREADS]
"""
import gzip, os, struct, sys, time

import numpy as np
import torch


def read_idx(path):
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(root):
    def f(name):
        for ext in ("", ".gz"):
            p = os.path.join(root, name + ext)
            if os.path.exists(p):
                return read_idx(p)
        raise SystemExit(f"missing {name} under {root}: run scripts/fetch-data.sh")

    xtr = f("train-images-idx3-ubyte").reshape(-1, 784).astype(np.float32) / 255
    xte = f("t10k-images-idx3-ubyte").reshape(-1, 784).astype(np.float32) / 255
    mean, std = xtr.mean(), xtr.std()
    return ((xtr - mean) / std, f("train-labels-idx1-ubyte").astype(np.int64),
            (xte - mean) / std, f("t10k-labels-idx1-ubyte").astype(np.int64))


def main():
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    root = os.path.join(os.path.dirname(__file__), "..", "data", "fashion-mnist")
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in load(root))
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 1000), torch.nn.ReLU(),
        torch.nn.Linear(1000, 1000), torch.nn.ReLU(),
        torch.nn.Linear(1000, 1000), torch.nn.ReLU(),
        torch.nn.Linear(1000, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for epoch in range(epochs):
        perm = torch.randperm(len(xtr))
        model.train()
        t0 = time.perf_counter()
        for i in range(0, len(xtr), 128):
            idx = perm[i : i + 128]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        print(f"epoch {epoch + 1}: {dt:.2f}s  test {100 * acc:.2f}%")


if __name__ == "__main__":
    main()
