"""Speed of every from-scratch component against its torch built-in.

    python benchmarks/components.py            # all cases
    python benchmarks/components.py conv       # cases whose name contains "conv"

    python benchmarks/components.py --threads 1 --compiled  # adds torch.compile(ours) where a case asks

For each case: forward plus backward of ours and of the built-in on the same
input, in the same process, alternating (ours, built-in, ours, ...) so that
both see the same machine state; after warm-up, the median of each is taken
and the ratio ours / built-in printed. With ``--threads 1`` the clock is the
process's CPU time (``time.process_time``), which other programs on a shared
machine do not inflate; otherwise wall time (``--clock`` chooses explicitly).
This is a measurement, not a test: the test suite asserts correctness only.

Cases live in ``benchmarks/cases/*.py``, each defining ``CASES``: a list of
``Case(name, shape_note, make_ours, make_builtin, make_inputs)``; a case made
with ``compiled=True`` also gets, under ``--compiled``, the ratio of
``torch.compile(ours)`` to the built-in and the seconds its first call took.
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
    compiled: bool = False  # with --compiled: also time torch.compile(ours)


def load_cases() -> list:
    cases = []
    for path in sorted((HERE / "cases").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"cases_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        cases += module.CASES
    return cases


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _step(fn, inputs, clock=time.perf_counter) -> float:
    leaves = [x.detach().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
              for x in inputs]
    start = clock()
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.ones_like(out))
    return clock() - start


def measure(case: Case, repeats: int = 15, warmup: int = 3, clock=time.perf_counter, compiled: bool = False) -> tuple:
    """Median seconds of (ours, built-in); with compiled, also (torch.compile(ours), its first call's wall seconds)."""
    torch.manual_seed(0)
    builtin = case.make_builtin()
    ours = case.make_ours()
    if isinstance(ours, torch.nn.Module) and isinstance(builtin, torch.nn.Module):
        ours.load_state_dict(builtin.state_dict())
    inputs = case.make_inputs()
    contenders = [("ours", ours), ("builtin", builtin)]
    compile_seconds = None
    if compiled:
        fused = torch.compile(ours)
        compile_seconds = _step(fused, inputs)          # the first call compiles forward and backward
        contenders.append(("compiled", fused))
    times = {label: [] for label, _ in contenders}
    for i in range(warmup + repeats):
        for label, fn in contenders:
            elapsed = _step(fn, inputs, clock)
            if i >= warmup:
                times[label].append(elapsed)
    medians = {label: statistics.median(values) for label, values in times.items()}
    if compiled:
        return medians["ours"], medians["builtin"], medians["compiled"], compile_seconds
    return medians["ours"], medians["builtin"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("filter", nargs="?", default="", help="only cases whose name contains this")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                        help="cpu: process CPU time, wall: elapsed time (default: cpu with --threads 1, else wall)")
    parser.add_argument("--compiled", action="store_true",
                        help="also time torch.compile(ours) for the cases that ask for it (compiles take tens of s)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock_name = args.clock or ("cpu" if torch.get_num_threads() == 1 else "wall")
    cases = [c for c in load_cases() if args.filter.lower() in c.name.lower()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, forward+backward, "
          f"median of {args.repeats} alternating runs, {clock_name} clock\n")
    compiled_column = args.compiled and any(case.compiled for case in cases)
    extra = " compiled / built-in (first call) |" if compiled_column else ""
    print(f"| component | shapes | ours (ms) | built-in (ms) | ratio |{extra}")
    print(f"|---|---|---:|---:|---:|{'---:|' if compiled_column else ''}")
    for case in cases:
        with_compile = compiled_column and case.compiled
        result = measure(case, repeats=args.repeats, clock=CLOCKS[clock_name], compiled=with_compile)
        ours, builtin = result[:2]
        row = f"| {case.name} | {case.shapes} | {ours * 1e3:.2f} | {builtin * 1e3:.2f} | {ours / builtin:.2f}x |"
        if with_compile:
            row += f" {result[2] / builtin:.2f}x ({result[3]:.0f} s) |"
        elif compiled_column:
            row += " |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
