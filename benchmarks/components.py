"""Speed of every from-scratch component against its torch built-in.

    python benchmarks/components.py            # all cases
    python benchmarks/components.py conv       # cases whose name contains "conv"

For each case: forward plus backward of ours and of the built-in on the same
input, in the same process, alternating (ours, built-in, ours, ...) so that
both see the same machine state; after warm-up, the median of each is taken
and the ratio ours / built-in printed. This is a measurement, not a test: the
test suite asserts correctness only.

Cases live in ``benchmarks/cases/*.py``, each defining ``CASES``: a list of
``Case(name, shape_note, make_ours, make_builtin, make_inputs)``.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    name: str             # e.g. "Conv2d 3x3"
    shapes: str           # where the shapes come from, e.g. "ResNet stage 1, batch 256"
    make_ours: Callable   # () -> module or function
    make_builtin: Callable
    make_inputs: Callable  # () -> tuple of tensors (floating ones get requires_grad)


def load_cases() -> list:
    cases = []
    for path in sorted((HERE / "cases").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"cases_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        cases += module.CASES
    return cases


def _step(fn, inputs) -> float:
    leaves = [x.detach().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
              for x in inputs]
    start = time.perf_counter()
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.ones_like(out))
    return time.perf_counter() - start


def measure(case: Case, repeats: int = 15, warmup: int = 3) -> tuple:
    torch.manual_seed(0)
    builtin = case.make_builtin()
    ours = case.make_ours()
    if isinstance(ours, torch.nn.Module) and isinstance(builtin, torch.nn.Module):
        ours.load_state_dict(builtin.state_dict())
    inputs = case.make_inputs()
    times = {"ours": [], "builtin": []}
    for i in range(warmup + repeats):
        for label, fn in (("ours", ours), ("builtin", builtin)):
            elapsed = _step(fn, inputs)
            if i >= warmup:
                times[label].append(elapsed)
    ours_median = statistics.median(times["ours"])
    builtin_median = statistics.median(times["builtin"])
    return ours_median, builtin_median


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("filter", nargs="?", default="", help="only cases whose name contains this")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [c for c in load_cases() if args.filter.lower() in c.name.lower()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, forward+backward, "
          f"median of {args.repeats} alternating runs\n")
    print(f"| component | shapes | ours (ms) | built-in (ms) | ratio |")
    print(f"|---|---|---:|---:|---:|")
    for case in cases:
        ours, builtin = measure(case, repeats=args.repeats)
        print(f"| {case.name} | {case.shapes} | {ours * 1e3:.2f} | {builtin * 1e3:.2f} | {ours / builtin:.2f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
