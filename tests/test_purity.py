"""No built-in layer math in the from-scratch code.

The curriculum's rule (CURRICULUM.md, "From scratch"): the layers in ``common.nn`` and the models in
``common.models`` compute with tensor operations (indexing, views, matmul, reductions, exp/erf, ...);
torch's layer implementations (``torch.nn.functional.*``, ``torch.sigmoid``, ``Tensor.softmax``,
``nn.Conv2d``, ...) appear only as references in checks, tests and benchmarks. This test reads the source
of every exported module and names each place that breaks the rule.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "common" / "nn").glob("*.py")) + sorted((ROOT / "common" / "models").glob("*.py"))

# functions of the torch namespace that compute a whole layer (or an activation) in one call
_TORCH_LAYER_FUNCTIONS = {
    "sigmoid", "sigmoid_", "tanh", "tanh_", "relu", "relu_", "relu6", "selu", "celu", "gelu", "silu",
    "hardtanh", "hardswish", "hardsigmoid", "prelu", "rrelu", "logsigmoid", "softplus", "mish",
    "softmax", "log_softmax", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "convolution",
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "native_batch_norm", "native_layer_norm",
    "native_group_norm", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
    "adaptive_max_pool2d", "lstm", "lstm_cell", "gru", "gru_cell", "rnn_tanh", "rnn_relu", "dropout",
    "feature_dropout", "alpha_dropout", "embedding", "embedding_bag", "linear", "bilinear",
    "scaled_dot_product_attention", "pixel_shuffle", "cross_entropy", "nll_loss",
}
# the same, called as a tensor method: x.sigmoid(), scores.softmax(-1)
_TENSOR_LAYER_METHODS = {"sigmoid", "sigmoid_", "tanh", "tanh_", "relu", "relu_", "softmax", "log_softmax"}
# torch.nn names that are containers or plumbing, not layer math
_NN_ALLOWED = {"Module", "Parameter", "Buffer", "Sequential", "ModuleList", "ModuleDict", "ParameterList",
               "ParameterDict", "init", "utils"}
# submodules that hold layer math or raw kernels
_FORBIDDEN_MODULES = ("torch.nn.functional", "torch._C", "torch.ops", "torch.special", "torch.nn.modules")


def _dotted(node: ast.AST) -> str:
    """`torch.nn.functional.relu` for the AST of that attribute chain, '' if it is not a plain chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def violations(source: str, filename: str = "<source>") -> list:
    """Every use of built-in layer math in `source`, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases = {"torch": "torch"}                         # local name -> the dotted module it stands for
    found = []

    def report(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
                if alias.name.startswith(_FORBIDDEN_MODULES):
                    report(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = full
                if full.startswith(_FORBIDDEN_MODULES) or node.module.startswith(_FORBIDDEN_MODULES):
                    report(node, f"imports {full}")
                elif node.module == "torch" and alias.name in _TORCH_LAYER_FUNCTIONS:
                    report(node, f"imports torch.{alias.name}")
                elif node.module == "torch.nn" and alias.name not in _NN_ALLOWED:
                    report(node, f"imports the torch layer torch.nn.{alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _dotted(node)
        if not chain:
            continue
        head, _, rest = chain.partition(".")
        full = f"{aliases[head]}.{rest}" if head in aliases and rest else chain
        if full.startswith(_FORBIDDEN_MODULES):
            report(node, f"uses {full}")
        elif full.startswith("torch.nn.") and full.split(".")[2] not in _NN_ALLOWED:
            report(node, f"uses the torch layer {full}")
        elif full.count(".") == 1 and full.startswith("torch.") and node.attr in _TORCH_LAYER_FUNCTIONS:
            report(node, f"calls {full}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in _TENSOR_LAYER_METHODS):
            owner = _dotted(node.func.value)
            if owner == "self" or owner.startswith("self.") or owner in aliases or owner.startswith("torch"):
                continue  # our own module's submodule (self.tanh), or torch.* handled above
            report(node, f"calls the tensor method .{node.func.attr}()")
    return sorted(set(found))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_builtin_layer_math(path):
    problems = violations(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    assert not problems, "built-in layer math in from-scratch code:\n" + "\n".join(problems)


def test_every_module_is_scanned():
    names = {p.stem for p in SOURCES}
    assert {"activations", "conv_pool", "normalization", "rnn", "attention", "resnet", "vgg"} <= names


@pytest.mark.parametrize("snippet, expected", [
    ("import torch\ny = torch.sigmoid(x)", "calls torch.sigmoid"),
    ("import torch\ny = torch.tanh(x)", "calls torch.tanh"),
    ("import torch\ny = x.softmax(-1)", "tensor method .softmax()"),
    ("import torch\ny = (a + b).sigmoid()", "tensor method .sigmoid()"),
    ("from torch.nn import functional as F\ny = F.relu(x)", "imports torch.nn.functional"),
    ("import torch.nn.functional as F\ny = F.conv2d(x, w)", "imports torch.nn.functional"),
    ("import torch\ny = torch.nn.functional.layer_norm(x, (4,))", "uses torch.nn.functional.layer_norm"),
    ("from torch import nn\nlayer = nn.Conv2d(1, 2, 3)", "uses the torch layer torch.nn.Conv2d"),
    ("import torch.nn as nn\nlayer = nn.LayerNorm(4)", "uses the torch layer torch.nn.LayerNorm"),
    ("from torch import relu\ny = relu(x)", "imports torch.relu"),
    ("from torch.nn import Conv2d\nlayer = Conv2d(1, 2, 3)", "imports the torch layer torch.nn.Conv2d"),
    ("import torch\ny = torch.ops.aten.gelu(x)", "uses torch.ops.aten.gelu"),
    ("import torch as T\ny = T.softmax(x, 1)", "calls torch.softmax"),
])
def test_the_scan_finds_planted_violations(snippet, expected):
    problems = violations(snippet)
    assert any(expected in p for p in problems), problems


def test_the_scan_allows_plain_tensor_math_and_plumbing():
    snippet = (
        "import torch\nfrom torch import nn\n"
        "class Block(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.weight = nn.Parameter(torch.empty(3))\n"
        "        self.layers = nn.Sequential(nn.ModuleList())\n"
        "        nn.init.zeros_(self.weight)\n"
        "    def forward(self, x):\n"
        "        return self.tanh(torch.exp(x).clamp(min=0) @ x.mT + torch.erf(x)).sum(-1)\n"
    )
    assert violations(snippet) == []
