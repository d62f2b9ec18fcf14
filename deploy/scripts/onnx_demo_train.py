#!/usr/bin/env python3
"""Trains a small multi-exit CNN on MNIST with PyTorch and exports it to ONNX:
the "bring your own model" demonstration (deploy/scripts/onnx_demo.sh runs it).

The model is written the way multi-exit PyTorch models are (SDN-style: side
classifiers on global-average-pooled features), knowing nothing of Offramp:

  stem    conv 1->16 3x3, BatchNorm, ReLU, max-pool 2     -> [16, 14, 14]
  exit_1  global average pool, linear 16->10
  stage2  residual block (two 3x3 convs, BatchNorm), then conv 16->32
          stride 2, BatchNorm, ReLU                        -> [32, 7, 7]
  exit_2  global average pool, linear 32->10
  stage3  residual block at 32 channels, global average pool, linear 32->10
          (final)

Its inputs are pixels / 255 like Offramp's MNIST loader; the normalisation
(MNIST mean and std) is the module's own first step, so it is exported into
the graph. Trained jointly (the three exits' cross-entropies summed) on the
training files minus their last 5,000 digits, which `offramp eval` and
`offramp calibrate` use as the validation split (`--subset val`).

  python deploy/scripts/onnx_demo_train.py --data ../shared/data/mnist \
      --out out/onnx-demo/mnist_sdn.onnx [--epochs 2] [--threads 2]

Prints a JSON line: per-exit accuracy on the validation split, seconds spent
training, parameters.
"""

import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081
VAL = 5000


def idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(data, stem):
    for name in (stem, stem + ".gz"):
        p = os.path.join(data, name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"no {stem}[.gz] in {data}")


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class MnistSdn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.exit_1 = nn.Linear(16, 10)
        self.stage2 = nn.Sequential(
            Residual(16), nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.exit_2 = nn.Linear(32, 10)
        self.stage3 = Residual(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem((x - MEAN) / STD)
        e1 = self.exit_1(x.mean(dim=(2, 3)))
        x = self.stage2(x)
        e2 = self.exit_2(x.mean(dim=(2, 3)))
        x = self.stage3(x)
        return e1, e2, self.head(x.mean(dim=(2, 3)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    images = idx(find(args.data, "train-images-idx3-ubyte"))
    labels = idx(find(args.data, "train-labels-idx1-ubyte"))
    x = torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    xt, yt, xv, yv = x[:-VAL], y[:-VAL], x[-VAL:], y[-VAL:]
    model = MnistSdn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = args.epochs * ((len(xt) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    started = time.time()
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            b = perm[i : i + 128]
            loss = sum(F.cross_entropy(o, yt[b]) for o in model(xt[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    trained = time.time() - started
    model.eval()
    with torch.no_grad():
        outs = [torch.cat(o) for o in zip(*(model(xv[i : i + 500]) for i in range(0, VAL, 500)))]
    accuracy = {n: (o.argmax(1) == yv).float().mean().item() for n, o in zip(["exit_1", "exit_2", "final"], outs)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # The three lines every multi-exit export needs: a sample input, the exits
    # as named outputs, and a dynamic batch.
    torch.onnx.export(
        model, (torch.rand(1, 1, 28, 28),), args.out, input_names=["image"], output_names=["exit_1", "exit_2", "final"],
        dynamic_axes={"image": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"val_accuracy": accuracy, "train_seconds": round(trained, 1), "epochs": args.epochs,
                      "params": params, "torch": torch.__version__, "onnx": args.out}))


if __name__ == "__main__":
    main()
