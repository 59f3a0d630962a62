"""Peak memory and time of loss + backward for the LM-head losses: eager reference, ours, torch, Liger.

    python -m benchmarks.bench_losses            # the recorded benchmark (CPU, fp32; 15-30 min on 2 cores)
    python -m benchmarks.bench_losses --quick    # small shapes, about a minute: checks that everything runs
    python -m benchmarks.bench_losses --shape 4096x1024x32000 --only kl   # one shape, forward KL (~4 min)

Every (implementation, shape) runs in a fresh subprocess, which

1. builds seeded inputs (student and teacher hidden states and heads, labels with 20% ignored);
2. warms up on the first 256 rows (library initialisation, first-call allocations);
3. runs loss + backward ``repeats`` times for the wall-clock times (gradients dropped in between), with
   the RSS high-water mark reset before (``/proc/self/clear_refs``) and read after: **RSS delta** =
   VmHWM − VmRSS at the start;
4. runs it once more under a ``TorchDispatchMode`` that counts the bytes of every storage an op creates
   and frees them when the storage dies: **peak live tensor bytes** (gradients included, inputs not;
   it does not see temporaries internal to one op, which the RSS figure does). With ``repeats == 1``
   steps 3 and 4 share one run.

The eager reference cannot run at N=8192, V=128256 (about 40 GB); it is measured at two smaller N and
extrapolated linearly (memory and time are affine in N at fixed H, V), marked ``*``.

Implementations (the loss is ``CE + forward KL(teacher ‖ student)`` at τ = 1, mean over valid tokens):

* ``eager``       `losses.reference.linear_distillation_loss` (materializes everything; autograd)
* ``ours``        `losses.fused_linear_distillation_loss` (torch row step on CPU)
* ``ours_lssd``   the same with ``logit_swap=True`` (Mix-CPT's LSSD)
* ``ours_kl``     the same with ``ce_weight=0`` (KL alone, for the CE + KL vs KL cost ratio)
* ``liger``       Liger-Kernel's ``LigerFusedLinearJSDLoss`` (β=0 is forward KL; ``compiled=False``
                  runs its pure-torch chunked path on CPU; default chunk of 1024 rows)
* ``liger_kl``    the same with ``weight_hard_loss=0``
* ``gemm_floor``  the four GEMMs alone at the same shape and in the same chunking as ``ours`` (student
                  logits, teacher logits, grad-input, grad-weight, fp32 buffers, valid rows only): the
                  floor of any fused KL that computes the logits with GEMMs; ``ours ÷ gemm_floor`` is the
                  overhead of everything else (row step, gathers, bias, reductions)
* ``eager_ce``    ``F.cross_entropy(F.linear(x, W).float(), y)``
* ``torch_ce``    torch's chunked ``F.linear_cross_entropy`` with default ``LinearCrossEntropyOptions()``
* ``torch_ce_c``  the same with ``batch_chunk_size`` = our default chunk
* ``ours_ce``     `losses.fused_linear_cross_entropy` (our chunk loop on CPU)

Liger-Kernel is optional: install it with ``pip install -e .[bench]``; when ``liger_kernel`` is not
importable its rows are skipped (a line says so). Nothing is installed at run time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

MiB = 2**20
TARGETS = {
    "memory vs eager": "ours ≤ 1/8 of eager",
    "memory vs liger": "ours ≤ 1/2 of Liger",
    "time vs eager": "ours ≤ 0.7 × eager",
    "time vs liger": "ours ≤ Liger",
    "ce+kl vs kl": "ours CE+KL ≤ 1.15 × ours KL alone",
    "time vs floor": "ours ≤ 1.1 × the GEMM floor",
}
# --only shorthands: named groups of implementations
GROUPS = {
    "kl": ["eager", "ours", "ours_kl", "gemm_floor", "liger", "liger_kl"],
    "ce": ["eager_ce", "torch_ce", "torch_ce_c", "ours_ce"],
}


@dataclass
class Case:
    label: str  # which configuration table it belongs to
    impl: str
    n: int
    h: int
    v: int
    repeats: int  # timed runs in this process
    threads: int
    live: str = (
        "separate"  # live-tensor count: "separate" run, "combined" with the timed run, or "none"
    )
    seed: int = 0


@dataclass
class Result:
    case: Case
    times: list[float] = field(default_factory=list)  # wall-clock seconds of loss + backward
    cpu_times: list[float] = field(
        default_factory=list
    )  # process CPU seconds (all threads) of the same
    rss_delta: float = 0.0  # bytes
    live_peak: float | None = None  # bytes
    loss: float = float("nan")
    loadavg: str = ""
    error: str | None = None


# --------------------------------------------------------------------------------------------------
# Worker side: one implementation at one shape
# --------------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _live_tensor_mode():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveTensorPeak(TorchDispatchMode):
        """Bytes of the storages created by ops inside the mode, alive at the worst moment."""

        def __init__(self):
            super().__init__()
            self.live = 0
            self.peak = 0
            self.sizes: dict[int, int] = {}

        def _free(self, key: int, nbytes: int) -> None:
            if self.sizes.pop(key, None) is not None:
                self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            # Outputs that alias an argument (views, in-place and out= ops) allocate nothing.
            inputs = {
                a.untyped_storage().data_ptr()
                for a in tree_flatten((args, kwargs))[0]
                if isinstance(a, torch.Tensor)
            }
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes == 0 or key in self.sizes or key in inputs:
                    continue
                self.sizes[key] = nbytes
                self.live += nbytes
                weakref.finalize(storage, self._free, key, nbytes)
            self.peak = max(self.peak, self.live)
            return out

    return LiveTensorPeak()


def _inputs(case: Case, n: int):
    import torch

    g = torch.Generator().manual_seed(case.seed)
    x = torch.randn(n, case.h, generator=g)
    w = torch.randn(case.v, case.h, generator=g) * case.h**-0.5
    xt = torch.randn(n, case.h, generator=g)
    wt = torch.randn(case.v, case.h, generator=g) * case.h**-0.5
    y = torch.randint(0, case.v, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.2] = -100
    return x.requires_grad_(), w.requires_grad_(), xt, wt, y


def _make_step(impl: str, x, w, xt, wt, y):
    """A closure computing loss + backward for one implementation; returns the loss value."""
    import torch
    import torch.nn.functional as F

    import losses
    from losses import reference

    def finish(loss):
        loss.backward()
        return float(loss.detach())

    if impl == "eager":
        spec = losses.LossSpec(kl_weight=1.0)
        return lambda: finish(
            reference.linear_distillation_loss(
                x, w, y, spec=spec, teacher_hidden=xt, teacher_weight=wt
            )
        )
    if impl in ("ours", "ours_lssd", "ours_kl"):
        spec = losses.LossSpec(
            ce_weight=0.0 if impl == "ours_kl" else 1.0,
            kl_weight=1.0,
            logit_swap=impl == "ours_lssd",
        )
        return lambda: finish(
            losses.fused_linear_distillation_loss(
                x, w, y, spec=spec, teacher_hidden=xt, teacher_weight=wt
            )
        )
    if impl == "gemm_floor":
        return _gemm_floor_step(x, w, xt, wt, y)
    if impl in ("liger", "liger_kl"):
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        fn = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0 if impl == "liger_kl" else 1.0,
            weight_soft_loss=1.0,
            beta=0.0,
            ignore_index=-100,
            temperature=1.0,
            compiled=False,
        )
        return lambda: finish(fn(x, w, xt, wt, y))
    if impl == "eager_ce":
        return lambda: finish(F.cross_entropy(F.linear(x, w).float(), y))
    if impl in ("torch_ce", "torch_ce_c"):
        from losses._common import default_chunk_size

        chunk = (
            default_chunk_size(x.shape[0], w.shape[0], x.device) if impl == "torch_ce_c" else None
        )
        options = torch.nn.LinearCrossEntropyOptions(
            batch_chunk_size=chunk, chunking_method=None if chunk else "auto"
        )
        return lambda: finish(F.linear_cross_entropy(x, w, y, options=options))
    if impl == "ours_ce":
        return lambda: finish(losses.fused_linear_cross_entropy(x, w, y))
    raise ValueError(f"unknown implementation {impl!r}")


def _gemm_floor_step(x, w, xt, wt, y):
    """The four GEMMs of the fused KL alone, with our chunking: the floor any fused KL pays."""
    import torch

    from losses._common import default_chunk_size
    from losses.fused import _balanced

    def step() -> float:
        with torch.no_grad():
            keep = (y != -100).nonzero().squeeze(1)
            n = keep.numel()
            vocab = w.shape[0]
            c = _balanced(n, default_chunk_size(n, vocab, x.device))
            s_buf = torch.empty(min(c, n), vocab)
            t_buf = torch.empty_like(s_buf)
            grad_x = torch.zeros_like(x)
            grad_w = torch.empty_like(w)
            for start in range(0, n, c):
                rows = keep[start : start + c]
                x_c, xt_c = x.index_select(0, rows), xt.index_select(0, rows)
                s, t = s_buf[: rows.numel()], t_buf[: rows.numel()]
                torch.mm(x_c, w.t(), out=s)  # student logits
                torch.mm(xt_c, wt.t(), out=t)  # teacher logits
                grad_x.index_copy_(0, rows, torch.mm(s, w))  # grad-input (s stands in for G)
                if start == 0:  # grad-weight, fp32 accumulator
                    torch.mm(s.t(), x_c, out=grad_w)
                else:
                    grad_w.addmm_(s.t(), x_c)
            x.grad, w.grad = grad_x, grad_w
            return float("nan")

    return step


def run_worker(case: Case) -> Result:
    import torch

    torch.set_num_threads(case.threads)
    result = Result(case)
    params = None

    def clear():
        for p in params:
            p.grad = None

    # Warm-up on a slice of the rows: loads kernels and libraries without paying a full iteration.
    small = _inputs(case, min(case.n, 256))
    params = small[:2]
    _make_step(case.impl, *small)()
    clear()
    del small

    x, w, xt, wt, y = _inputs(case, case.n)
    params = (x, w)
    step = _make_step(case.impl, x, w, xt, wt, y)

    def timed():
        t0, c0 = time.perf_counter(), _cpu_seconds()
        result.loss = step()
        result.times.append(time.perf_counter() - t0)
        result.cpu_times.append(_cpu_seconds() - c0)
        clear()

    _reset_peak_rss()
    base = _status_kib("VmRSS")
    if case.live == "combined":
        mode = _live_tensor_mode()
        with mode:
            timed()
        result.live_peak = float(mode.peak)
    for _ in range(case.repeats - (case.live == "combined")):
        timed()
    result.rss_delta = (_status_kib("VmHWM") - base) * 1024.0
    if case.live == "separate":
        mode = _live_tensor_mode()
        with mode:
            step()
        clear()
        result.live_peak = float(mode.peak)
    result.loadavg = _loadavg()
    return result


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------------
# Parent side: plan, subprocesses, extrapolation, tables
# --------------------------------------------------------------------------------------------------


@dataclass
class Config:
    label: str
    n: int
    h: int
    v: int
    impls: list[str]
    rounds: int  # interleaved rounds: every implementation once per round, each in a fresh process
    eager_ns: list[int] | None = None  # measure eager at these N and extrapolate to n
    # at the eager_ns, also measure these (a direct comparison at equal N, next to the extrapolation)
    same_n: tuple[str, ...] = ("ours", "ours_ce")


def plan(quick: bool) -> list[Config]:
    if quick:
        return [
            Config(
                "quick A: N=2048 H=256 V=16000",
                2048,
                256,
                16000,
                [
                    "eager",
                    "ours",
                    "ours_kl",
                    "gemm_floor",
                    "liger",
                    "eager_ce",
                    "torch_ce_c",
                    "ours_ce",
                ],
                rounds=1,
            ),
            Config(
                "quick B: N=2048 H=256 V=16000 (eager extrapolated from N=512, 1024)",
                2048,
                256,
                16000,
                ["eager", "ours"],
                rounds=1,
                eager_ns=[512, 1024],
            ),
        ]
    return [
        Config(
            "N=4096 H=1024 V=32000",
            4096,
            1024,
            32000,
            [
                "eager",
                "ours",
                "ours_lssd",
                "ours_kl",
                "gemm_floor",
                "liger",
                "liger_kl",
                "eager_ce",
                "torch_ce",
                "torch_ce_c",
                "ours_ce",
            ],
            rounds=3,
        ),
        Config(
            "N=8192 H=2048 V=128256 (eager extrapolated from N=384, 768)",
            8192,
            2048,
            128256,
            ["eager", "ours", "ours_kl", "liger", "eager_ce", "torch_ce_c", "ours_ce"],
            rounds=1,
            eager_ns=[384, 768],
        ),
    ]


def liger_version() -> str | None:
    """The installed Liger-Kernel's version, or None (then its rows are skipped, with a line saying so)."""
    if importlib.util.find_spec("liger_kernel") is None:
        print(
            "Liger-Kernel is not importable: the liger rows are skipped "
            "(install it with `pip install -e .[bench]`)",
            flush=True,
        )
        return None
    try:
        from importlib.metadata import version

        import liger_kernel.chunked_loss  # noqa: F401

        return version("liger-kernel")
    except Exception as exc:
        print(f"Liger-Kernel unavailable ({exc!r}); its rows are skipped", flush=True)
        return None


def run_case(case: Case, timeout: float) -> Result:
    env = dict(os.environ, OMP_NUM_THREADS=str(case.threads), MKL_NUM_THREADS=str(case.threads))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "benchmarks.bench_losses", "--worker", json.dumps(asdict(case))]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=Path(__file__).resolve().parents[1],
        )
    except subprocess.TimeoutExpired:
        return Result(case, error=f"timed out after {timeout:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            data = json.loads(line[len("RESULT ") :])
            data["case"] = case
            return Result(**data)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return Result(case, error=f"exit {proc.returncode}: {' | '.join(tail)}")


@dataclass
class Row:
    impl: str
    live: float
    rss: float
    median: float  # wall seconds, median over every timed run of every round
    tmin: float
    tmax: float
    cpu: float  # process CPU seconds, median
    loss: float
    runs: int = 0
    extrapolated: bool = False
    error: str | None = None


NAN = float("nan")


def _aggregate(impl: str, results: list[Result]) -> Row:
    """One row from the rounds of one implementation at one N."""
    good = [r for r in results if not r.error]
    if not good:
        return Row(
            impl, NAN, NAN, NAN, NAN, NAN, NAN, NAN, error="; ".join(r.error for r in results)
        )
    times = [t for r in good for t in r.times]
    cpu = [t for r in good for t in r.cpu_times]
    live = [r.live_peak for r in good if r.live_peak is not None]
    return Row(
        impl,
        live[0] if live else NAN,
        statistics.median(r.rss_delta for r in good),
        statistics.median(times),
        min(times),
        max(times),
        statistics.median(cpu),
        good[0].loss,
        runs=len(times),
    )


def _extrapolate(impl: str, low: Row, high: Row, n_low: int, n_high: int, n: int) -> Row:
    """Fit value = a + b·N through the two measured points and evaluate at n (each metric separately)."""
    if low.error or high.error:
        return Row(impl, *(NAN,) * 7, extrapolated=True, error=low.error or high.error)

    def fit(a: float, b: float) -> float:
        return a + (b - a) * (n - n_low) / (n_high - n_low)

    median = fit(low.median, high.median)
    return Row(
        impl,
        fit(low.live, high.live),
        fit(low.rss, high.rss),
        median,
        median,
        median,
        fit(low.cpu, high.cpu),
        NAN,
        runs=low.runs + high.runs,
        extrapolated=True,
    )


def environment(threads: int, liger_version: str | None) -> dict:
    import torch

    cpu, flags = "?", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    try:
        triton_version = __import__("triton").__version__
    except Exception:
        triton_version = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "avx512": sorted(f for f in flags if f.startswith("avx512")),
        "amx": sorted(f for f in flags if f.startswith("amx")),
        "torch": torch.__version__,
        "triton": triton_version,
        "liger_kernel": liger_version,
        "python": platform.python_version(),
        "allocator": "glibc malloc (default)",
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _mib(b: float) -> str:
    return "—" if b != b else f"{b / MiB:,.0f}"


def _ref_for(impl: str) -> str:
    return "eager_ce" if "_ce" in impl else "eager"


def table(config: Config, rows: dict[str, Row]) -> str:
    out = [
        f"### {config.label}",
        "",
        "| impl | peak live MiB | RSS delta MiB | wall s, median (min–max) [runs] | CPU s | "
        "live vs ref | RSS vs ref | wall vs ref | CPU vs ref | loss |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for impl in config.impls:
        r = rows.get(impl)
        if r is None:
            continue
        if r.error:
            out.append(f"| {impl} | error: {r.error} | | | | | | | | |")
            continue
        star = "*" if r.extrapolated else ""
        ref = rows.get(_ref_for(impl))
        cells = [""] * 4
        if ref is not None and not ref.error and impl not in ("eager", "eager_ce") and r.live:
            cells = [
                f"1/{ref.live / r.live:.1f}",
                f"1/{ref.rss / r.rss:.1f}",
                f"{r.median / ref.median:.2f}",
                f"{r.cpu / ref.cpu:.2f}",
            ]
        span = f"{r.median:.2f}{star}" + (
            "" if r.tmin == r.tmax else f" ({r.tmin:.2f}–{r.tmax:.2f})"
        )
        loss = "" if r.loss != r.loss else f"{r.loss:.5f}"
        out.append(
            f"| {impl}{star} | {_mib(r.live)}{star} | {_mib(r.rss)}{star} | {span} [{r.runs}] | "
            f"{r.cpu:.2f}{star} | " + " | ".join(cells) + f" | {loss} |"
        )
    out.append("")
    out.append(
        "ref = `eager_ce` for the cross-entropy rows, `eager` for the others; `*` = extrapolated."
    )
    if config.eager_ns:
        out += [
            "",
            f"Measured at equal N (the points of the extrapolation), H={config.h}, V={config.v}:",
            "",
            "| N | impl | peak live MiB | RSS delta MiB | wall s (min–max) [runs] | CPU s | "
            "live vs ref | RSS vs ref | wall vs ref | CPU vs ref |",
            "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for n in config.eager_ns:
            for impl in ("eager", "ours", "eager_ce", "ours_ce"):
                r = rows.get(f"{impl}@{n}")
                if r is None or r.error:
                    continue
                ref = rows.get(f"{_ref_for(impl)}@{n}")
                cells = [""] * 4
                if ref is not None and not ref.error and not impl.startswith("eager"):
                    cells = [
                        f"1/{ref.live / r.live:.1f}",
                        f"1/{ref.rss / r.rss:.1f}",
                        f"{r.median / ref.median:.2f}",
                        f"{r.cpu / ref.cpu:.2f}",
                    ]
                out.append(
                    f"| {n} | {impl} | {_mib(r.live)} | {_mib(r.rss)} | {r.median:.2f} "
                    f"({r.tmin:.2f}–{r.tmax:.2f}) [{r.runs}] | {r.cpu:.2f} | "
                    + " | ".join(cells)
                    + " |"
                )
    return "\n".join(out)


def targets(config: Config, rows: dict[str, Row]) -> str:
    def get(name):
        r = rows.get(name)
        return None if r is None or r.error else r

    ours, eager, liger, kl = get("ours"), get("eager"), get("liger"), get("ours_kl")
    lines = [f"Targets ({config.label}):"]

    def check(name, ok, detail):
        lines.append(f"  - {TARGETS[name]}: {detail} → {'met' if ok else 'MISSED'}")

    if ours and eager:
        for what, a, b in (("live", ours.live, eager.live), ("RSS", ours.rss, eager.rss)):
            check(
                "memory vs eager",
                a / b <= 1 / 8,
                f"{what} {a / MiB:,.0f} / {b / MiB:,.0f} MiB = 1/{b / a:.1f}",
            )
        for what, a, b in (("wall", ours.median, eager.median), ("CPU", ours.cpu, eager.cpu)):
            check("time vs eager", a / b <= 0.7, f"{what} {a:.2f} s / {b:.2f} s = {a / b:.2f}")
    if ours and liger:
        for what, a, b in (("live", ours.live, liger.live), ("RSS", ours.rss, liger.rss)):
            check(
                "memory vs liger",
                a / b <= 0.5,
                f"{what} {a / MiB:,.0f} / {b / MiB:,.0f} MiB = {a / b:.2f}",
            )
        for what, a, b in (("wall", ours.median, liger.median), ("CPU", ours.cpu, liger.cpu)):
            check("time vs liger", a <= b, f"{what} {a:.2f} s / {b:.2f} s = {a / b:.2f}")
    if config.eager_ns:
        n = config.eager_ns[-1]
        small_ours, small_eager = get(f"ours@{n}"), get(f"eager@{n}")
        if small_ours and small_eager:
            for what, a, b in (
                ("wall", small_ours.median, small_eager.median),
                ("CPU", small_ours.cpu, small_eager.cpu),
            ):
                check(
                    "time vs eager",
                    a / b <= 0.7,
                    f"measured at equal N={n}: {what} {a:.2f} s / {b:.2f} s = {a / b:.2f}",
                )
    if ours and kl:
        for what, a, b in (("wall", ours.median, kl.median), ("CPU", ours.cpu, kl.cpu)):
            check("ce+kl vs kl", a / b <= 1.15, f"{what} {a:.2f} s / {b:.2f} s = {a / b:.2f}")
    floor = get("gemm_floor")
    if floor:
        for name, r in (("CE+KL", ours), ("KL alone", kl)):
            if r is None:
                continue
            for what, a, b in (("wall", r.median, floor.median), ("CPU", r.cpu, floor.cpu)):
                check(
                    "time vs floor",
                    a / b <= 1.1,
                    f"{name} {what} {a:.2f} s / {b:.2f} s = ours ÷ floor {a / b:.2f}",
                )
    return "\n".join(lines)


def measure(
    config: Config,
    only: set[str] | None,
    liger: bool,
    threads: int,
    timeout: float,
    log,
    settle: float = 3.0,
) -> tuple:
    """Run every (implementation, N) of a configuration, interleaving the rounds; returns rows and raw results."""
    impls = [
        i for i in config.impls if (not only or i in only) and (liger or not i.startswith("liger"))
    ]
    jobs = []  # (impl, n), the equal-N partner right after each eager point
    for impl in impls:
        if config.eager_ns and impl in ("eager", "eager_ce"):
            partner = "ours" if impl == "eager" else "ours_ce"
            for n in config.eager_ns:
                jobs.append((impl, n))
                if partner in config.same_n and partner in impls:
                    jobs.append((partner, n))
        else:
            jobs.append((impl, config.n))
    raw: dict[tuple[str, int], list[Result]] = {job: [] for job in jobs}
    for round_ in range(config.rounds):
        # Rotate the order every round, so that no implementation always follows the same neighbour (the
        # process right after a multi-GB one tends to run slower while the kernel reclaims memory).
        shift = round_ * len(jobs) // max(config.rounds, 1)
        for impl, n in jobs[shift:] + jobs[:shift]:
            time.sleep(settle)
            # One timed run per process; the small extrapolation points are cheap, so they get three.
            small = n != config.n
            live = (
                "separate"
                if round_ == 0 and config.rounds > 1
                else ("combined" if round_ == 0 else "none")
            )
            case = Case(
                config.label,
                impl,
                n,
                config.h,
                config.v,
                repeats=3 if small else 1,
                threads=threads,
                live="separate" if small else live,
            )
            result = run_case(case, timeout)
            raw[(impl, n)].append(result)
            log(
                f"round {round_ + 1}/{config.rounds} {impl} N={n}: "
                + (
                    result.error
                    or f"wall {result.times} cpu {[round(c, 2) for c in result.cpu_times]} "
                    f"rss {result.rss_delta / MiB:,.0f} MiB live "
                    f"{'-' if result.live_peak is None else f'{result.live_peak / MiB:,.0f} MiB'} "
                    f"loss {result.loss:.5f} load {result.loadavg}"
                )
            )
    rows: dict[str, Row] = {}
    for (impl, n), results in raw.items():
        if n != config.n:
            rows[f"{impl}@{n}"] = _aggregate(impl, results)
    for impl in impls:
        if impl in ("eager", "eager_ce") and config.eager_ns:
            lo, hi = config.eager_ns[0], config.eager_ns[-1]
            rows[impl] = _extrapolate(
                impl,
                _aggregate(impl, raw[(impl, lo)]),
                _aggregate(impl, raw[(impl, hi)]),
                lo,
                hi,
                config.n,
            )
        else:
            rows[impl] = _aggregate(impl, raw[(impl, config.n)])
    return rows, [r for results in raw.values() for r in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small shapes (1-2 minutes), to check the harness"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per measured process")
    parser.add_argument(
        "--only", default=None, help="comma-separated implementations to run (default: all)"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON results file (default benchmarks/results/…)"
    )
    parser.add_argument(
        "--configs", default=None, help="comma-separated indices of the configurations to run"
    )
    parser.add_argument(
        "--settle", type=float, default=3.0, help="pause in seconds before each measured process"
    )
    parser.add_argument(
        "--shape",
        default=None,
        help="run one shape NxHxV (e.g. 4096x1024x32000) instead of the plan; with --rounds",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds for --shape (default 3)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = run_worker(Case(**json.loads(args.worker)))
        data = asdict(result)
        data.pop("case")
        print("RESULT " + json.dumps(data), flush=True)
        return 0

    only = None
    if args.only:
        only = {i for name in args.only.split(",") for i in GROUPS.get(name, [name])}
    configs = plan(args.quick)
    if args.configs:
        configs = [configs[int(i)] for i in args.configs.split(",")]
    if args.shape:
        try:
            n, h, v = (int(part) for part in args.shape.lower().split("x"))
        except ValueError:
            parser.error(f"--shape must look like 4096x1024x32000 (N x H x V), got {args.shape!r}")
        impls = [i for i in (*GROUPS["kl"], "ours_lssd", *GROUPS["ce"]) if not only or i in only]
        configs = [Config(f"N={n} H={h} V={v}", n, h, v, impls, rounds=args.rounds)]
    needs_liger = any(
        i.startswith("liger") for c in configs for i in c.impls if not only or i in only
    )
    liger = liger_version() if needs_liger else None
    env = environment(args.threads, liger)
    print("environment: " + json.dumps(env), flush=True)
    command = "python -m benchmarks.bench_losses " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report = {"command": command, "environment": env, "configs": []}
    markdown = []
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {message}", flush=True)

    for config in configs:
        rows, raw = measure(
            config,
            only,
            liger is not None,
            args.threads,
            args.timeout,
            log,
            settle=0.0 if args.quick else args.settle,
        )
        text = table(config, rows) + "\n\n" + targets(config, rows)
        print("\n" + text + "\n", flush=True)
        markdown.append(text)
        report["configs"].append(
            {
                "label": config.label,
                "rows": {k: asdict(v) for k, v in rows.items()},
                "raw": [dict(asdict(r), case=asdict(r.case)) for r in raw],
            }
        )
    env["loadavg_end"] = _loadavg()
    report["elapsed_s"] = time.time() - started
    out = args.out or Path(__file__).resolve().parent / "results" / (
        f"bench_losses{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(
        f"`{command}`\n\n```\n{json.dumps(env, indent=1)}\n```\n\n" + "\n\n".join(markdown) + "\n"
    )
    print(
        f"results: {out} (+ .md); {report['elapsed_s']:.0f} s in all; load average {env['loadavg_start']} "
        f"at the start, {env['loadavg_end']} at the end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
