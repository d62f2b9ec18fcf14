#!/usr/bin/env python3
"""Writes the ONNX fixtures of the `import onnx` tests into tests/fixtures/onnx/.

Each model is a seeded PyTorch module exported with `torch.onnx.export` (the
TorchScript exporter, opset 17, dynamic batch), with the shape-inference
annotations `onnx.shape_inference` adds, as a user's export would be:

  res_cnn.onnx   a CNN with a residual block and two side exits
                 (outputs exit_a, exit_b, final)
  tiny_vit.onnx  a tiny ViT: patch embedding, class token, 3 pre-LN blocks
                 (LayerNorm, attention, GELU MLP), class-token exits after
                 blocks 1 and 2 (outputs exit_1, exit_2, final)

and the graphs `import onnx` must refuse, each made from res_cnn by one edit:

  two_cuts.onnx      an exit head that reads two cut tensors
  unsupported.onnx   a node whose op (com.example:Mystery) no engine runs
  dynamic_hw.onnx    the input's height and width left dynamic

and, for res_cnn and tiny_vit, `<name>.io.json`: three inputs and the PyTorch
module's outputs for them (the reference the tests hold the import to).

Run with the venv that has torch (see docs/src/guide/bring-your-own-model.md):
  target/torch-venv/bin/python deploy/scripts/onnx_fixtures.py
"""

import copy
import json
import os
import sys

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper, shape_inference

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "onnx")


class ResCnn(nn.Module):
    """stem -> residual block -> down -> fc, exits after the stem and down."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.res1 = nn.Conv2d(8, 8, 3, padding=1)
        self.res2 = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.exit_a = nn.Linear(8, 10)
        self.exit_b = nn.Linear(16 * 7 * 7, 10)
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        s = F.max_pool2d(F.relu(self.stem(x)), 2)  # [8, 14, 14]
        a = self.exit_a(torch.flatten(F.adaptive_avg_pool2d(s, 1), 1))
        r = F.relu(s + self.res2(F.relu(self.res1(s))))  # residual: no cut inside
        d = F.relu(self.down(r))  # [16, 7, 7]
        f = torch.flatten(d, 1)
        b = self.exit_b(f)
        return a, b, self.fc2(F.relu(self.fc1(f)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        t, d = x.shape[1], x.shape[2]
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).reshape(-1, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(-1, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyVit(nn.Module):
    def __init__(self, dim=32, heads=4, hidden=64, patch=7, depth=3):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (28 // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.heads = nn.ModuleList(nn.Linear(dim, 10) for _ in range(depth))

    def forward(self, x):
        p = self.patch(x).flatten(2).transpose(1, 2)  # [B, 16, dim]
        x = torch.cat([self.cls.expand(p.shape[0], -1, -1), p], dim=1) + self.pos
        outs = []
        for block, norm, head in zip(self.blocks, self.norms, self.heads):
            x = block(x)
            outs.append(head(norm(x[:, 0])))  # an exit on the class token
        return tuple(outs)


def write_io(model, outputs, onnx_path, path):
    """Three digit-like inputs (u8 / 255) and what the PyTorch module answers
    for them: the tests' reference, from outside Offramp's engine."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (3, 1, 28, 28), generator=g).float() / 255
    with torch.no_grad():
        ys = model(x)
    io = {"input": x.flatten().tolist(), "batch": 3,
          "outputs": {name: y.flatten().tolist() for name, y in zip(outputs, ys)}}
    # The export answers what the module does (ONNX Runtime as the judge).
    import onnxruntime
    sess = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    for name, got in zip(outputs, sess.run(outputs, {"image": x.numpy()})):
        diff = abs(torch.from_numpy(got) - ys[outputs.index(name)]).max().item()
        assert diff < 1e-5, f"{onnx_path}: {name} differs from PyTorch by {diff}"
    with open(path, "w") as f:
        json.dump(io, f)


def export(model, outputs, path, dynamic_hw=False):
    model.eval()
    x = torch.rand(1, 1, 28, 28)
    axes = {"image": {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}}
    axes.update({o: {0: "batch"} for o in outputs})
    torch.onnx.export(
        model, (x,), path, input_names=["image"], output_names=outputs,
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )
    m = shape_inference.infer_shapes(onnx.load(path))
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return m


class TwoCuts(ResCnn):
    """ResCnn whose first exit also reads the down block's output: its head
    hangs off two cuts."""

    def forward(self, x):
        s = F.max_pool2d(F.relu(self.stem(x)), 2)
        r = F.relu(s + self.res2(F.relu(self.res1(s))))
        d = F.relu(self.down(r))
        pooled = torch.flatten(F.adaptive_avg_pool2d(s, 1), 1) + torch.flatten(F.adaptive_avg_pool2d(d, 1), 1)[:, :8]
        f = torch.flatten(d, 1)
        return self.exit_a(pooled), self.exit_b(f), self.fc2(F.relu(self.fc1(f)))


def unsupported(cnn):
    m = copy.deepcopy(cnn)
    node = [n for n in m.graph.node if n.op_type == "Relu"][0]
    node.op_type = "Mystery"
    node.domain = "com.example"
    node.name = "/stem/mystery"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return m


def main():
    torch.manual_seed(31)
    os.makedirs(OUT, exist_ok=True)
    model = ResCnn()
    cnn = export(model, ["exit_a", "exit_b", "final"], os.path.join(OUT, "res_cnn.onnx"))
    write_io(model, ["exit_a", "exit_b", "final"], os.path.join(OUT, "res_cnn.onnx"), os.path.join(OUT, "res_cnn.io.json"))
    torch.manual_seed(31)
    model = TinyVit()
    export(model, ["exit_1", "exit_2", "final"], os.path.join(OUT, "tiny_vit.onnx"))
    write_io(model, ["exit_1", "exit_2", "final"], os.path.join(OUT, "tiny_vit.onnx"), os.path.join(OUT, "tiny_vit.io.json"))
    torch.manual_seed(31)
    export(TwoCuts(), ["exit_a", "exit_b", "final"], os.path.join(OUT, "two_cuts.onnx"))
    onnx.save(unsupported(cnn), os.path.join(OUT, "unsupported.onnx"))
    torch.manual_seed(31)
    export(ResCnn(), ["exit_a", "exit_b", "final"], os.path.join(OUT, "dynamic_hw.onnx"), dynamic_hw=True)
    for f in sorted(os.listdir(OUT)):
        size = os.path.getsize(os.path.join(OUT, f))
        assert size < 200_000, f"{f} is {size} bytes"
        print(f"{f}: {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
