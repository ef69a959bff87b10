"""The fused kernels' compiled code, without a GPU: compiled for sm_80 (A100)
and sm_90 (H100) by ``snnl.kernel_tools.lab`` in a separate process (the Triton
interpreter, on in this one, makes no compilable kernels), and what must hold
of it, for every launch a loss call makes (the pair kernels, their far pass
and the row kernels around them): it compiles, nothing spills (fp32, bf16),
shared memory fits the block limit (fp64 included), the fp32 default path
runs on the tensor cores.  Also,
in the interpreter: exponentials per pair, the 3xTF32 products' accuracy
(emulated, since the interpreter multiplies in full precision) and bf16
refused there.

Which Triton: the one installed (the ``dev`` extra pins it, 3.9.0); the same
tests passed with Triton 3.6.0, the version torch 2.11's CUDA build ships
(bench/results/compiled-code-triton-3.6.txt).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="the compiled-code tests need the triton package")

MATRIX = dict(
    dtypes=["float32", "bfloat16", "float64"],
    distances=["cosine", "euclidean"],
    batches=[256, 8192, 131072],
    dims=[70, 128, 512],
)

LAB_SCRIPT = """
import json, sys
from dataclasses import asdict
from snnl.kernel_tools import lab
m = json.loads(sys.argv[1])
out = []
for dtype in m["dtypes"]:
    for distance in m["distances"]:
        for batch in m["batches"]:
            for dim in m["dims"]:
                for r in lab.inspect_problem(batch, dim, dtype, distance, targets=[m["target"]]):
                    out.append({"dtype": dtype, "distance": distance, "batch": batch, "dim": dim, **asdict(r)})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reports():
    # one process per target, side by side (CI has two cores)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", LAB_SCRIPT, json.dumps({**MATRIX, "target": target})],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for target in ("sm_80", "sm_90")
    ]
    out = []
    for child in children:
        try:
            stdout, stderr = child.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for other in children:
                other.kill()
            pytest.fail("compiling the matrix took more than 15 minutes")
        if child.returncode != 0 and "ptxas" in stderr and "No such file" in stderr:
            pytest.skip("Triton's bundled ptxas cannot run on this machine")
        assert child.returncode == 0, stderr[-3000:]
        out += json.loads(stdout.strip().splitlines()[-1])
    return out


def _name(r):
    c = r["config"]
    return (
        f"{r['target']} {r['role']} {r['dtype']} {r['distance']} b={r['batch']} d={r['dim']} "
        f"tile {c['block_m']}x{c['block_n']}x{c['block_d']}/{c['num_warps']}w"
    )


# roles with products of tiles of pairs, and the exp2 each computes per pair
# and trip: one (the shared-exp passes); in finish_forward's exact pass (rare:
# tiles with far rows) two (all pairs and same-class ones, each with its own
# maximum) and the rescaling of both running sums per row and trip, repeated
# by the threads that hold the row (about one more per pair at 32 x 64); four
# in the backward far pass (own and their terms, each all and same-class)
PAIR_ROLES = {"forward": 1, "backward": 1, "finish-forward": 3, "backward-far": 4}


@pytest.mark.slow  # the compiled matrix: minutes of ptxas on two cores
def test_every_launch_compiles_for_both_targets(reports):
    assert {r["target"] for r in reports} == {"sm_80", "sm_90"}
    assert {r["role"] for r in reports} == {"prepare", "coefficients", "finish-backward", *PAIR_ROLES}
    failed = [f"{_name(r)}: {r['error']}" for r in reports if r["error"]]
    assert not failed, failed


@pytest.mark.slow  # the compiled matrix: minutes of ptxas on two cores
def test_no_spills_in_fp32_and_bf16(reports):
    spilled = [
        f"{_name(r)}: {r['spill_stores']} B"
        for r in reports
        if r["dtype"] != "float64" and (r["spill_stores"] or r["sass_loop"]["local"])
    ]
    assert not spilled, spilled


@pytest.mark.slow  # the compiled matrix: minutes of ptxas on two cores
def test_shared_memory_within_the_block_limit_for_every_dtype(reports):
    over = [f"{_name(r)}: {r['shared']} > {r['shared_limit']}" for r in reports if r["shared"] > r["shared_limit"]]
    assert not over, over


@pytest.mark.slow  # the compiled matrix: minutes of ptxas on two cores
def test_fp32_default_and_bf16_run_on_the_tensor_cores(reports):
    pairs = [r for r in reports if r["role"] in PAIR_ROLES]
    missing = [_name(r) for r in pairs if r["dtype"] != "float64" and not r["sass_loop"]["mma"]]
    assert not missing, missing
    # and the fp32 default (3xTF32) does not fall back to FMA products: one
    # product of a tile on the FMA units is BLOCK_D FFMAs per pair; the loop's
    # FFMAs are the elementwise work and the in-register TF32 split, a small
    # fraction of that
    fma_products = []
    for r in pairs:
        c = r["constexprs"]
        pairs_per_thread = c["BLOCK_M"] * c["BLOCK_N"] / (32 * r["config"]["num_warps"])
        if r["dtype"] == "float32" and r["sass_loop"]["ffma"] > pairs_per_thread * c["BLOCK_D"] / 4:
            fma_products.append(f"{_name(r)}: {r['sass_loop']['ffma']} FFMA per thread and trip")
    assert not fma_products, fma_products


@pytest.mark.slow  # the compiled matrix: minutes of ptxas on two cores
def test_one_exp2_per_pair_and_pass_in_the_code(reports):
    # per trip of the main loop (one key tile), each thread's MUFU.EX2s cover
    # its share of the tile's pairs once per exp2 of the role: none replicated
    # across warps
    replicated = []
    for r in (r for r in reports if r["role"] in PAIR_ROLES):
        c = r["constexprs"]
        threads = 32 * r["config"]["num_warps"]
        per_pair = PAIR_ROLES[r["role"]]
        if r["dtype"] != "float64" and r["sass_loop"]["ex2"] * threads > per_pair * c["BLOCK_M"] * c["BLOCK_N"]:
            replicated.append(f"{_name(r)}: {r['sass_loop']['ex2']} per thread")  # fp64's exp2 is not MUFU
    assert not replicated, replicated


def test_small_batches_fill_the_gpu():
    # b = 1024 must launch >= 132 programs per tile kernel (split key range): the configs' arithmetic, no compiling
    from snnl.kernels.configs import TARGET_PROGRAMS, candidate_configs, model_programs

    for capability in (80, 90):
        for kind in ("forward", "backward"):
            for config in candidate_configs(kind, 1024, 128, torch.float32, capability):
                assert model_programs(1024, 1024, config) >= TARGET_PROGRAMS, config


def test_kernels_stay_narrow():
    # no @triton.jit function takes more than 20 parameters (the sides of the
    # pairs travel as records, layout.Side; the compile-time choices as one, layout.Math)
    import ast
    from pathlib import Path

    import snnl.kernels

    wide = []
    for path in Path(snnl.kernels.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
                if len(node.args.args) > 20:
                    wide.append(f"{path.name}:{node.name} takes {len(node.args.args)}")
    assert not wide, wide


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("keys", [False, True])
def test_the_lab_compiles_the_launches_the_loss_makes(monkeypatch, distance, keys):
    # one plan of launches (snnl.loss.backends.triton.forward_plan / backward_plan):
    # every launch a loss call runs (under the interpreter, the first candidate
    # configuration) is among those the lab compiles for the same problem (with a
    # learned temperature: the lab compiles the backward that also sums its share)
    from snnl import soft_nearest_neighbor_loss
    from snnl.kernel_tools.lab import loss_launches
    from snnl.kernels import configs

    ran = []
    run = configs.Launch.run

    def recording(launch):
        ran.append((launch.kernel.fn.__name__, repr(sorted(launch.described_constexprs().items()))))
        return run(launch)

    monkeypatch.setattr(configs.Launch, "run", recording)
    b, d = 64, 20
    z = torch.randn(b, d, requires_grad=True)
    labels = torch.randint(0, 4, (b,))
    t = torch.tensor(0.5, requires_grad=True)
    if keys:  # a process's rows against the global batch (torch.distributed): a quarter of the rows
        bank = torch.randn(b, d, requires_grad=True)
        loss = soft_nearest_neighbor_loss(
            z[: b // 4], labels[: b // 4], t, keys=bank, key_labels=labels, backend="triton", distance=distance
        )
    else:
        loss = soft_nearest_neighbor_loss(z, labels, t, backend="triton", distance=distance)
    loss.backward()
    compiled = {
        (launch.kernel.fn.__name__, repr(sorted(launch.described_constexprs().items())))
        for _, launch in loss_launches(b, d, "float32", distance, distributed=keys)
    }
    assert ran and set(ran) <= compiled, set(ran) - compiled


# --------------------------------------------------------------------------- in the interpreter


def test_exps_per_pair_counted_in_the_interpreter(monkeypatch):
    from triton.runtime import interpreter

    from snnl import soft_nearest_neighbor_loss
    from snnl.kernels import configs
    from snnl.kernels.configs import TileConfig
    from snnl.loss.backends import triton as fused

    counted, kernel = [], [None]
    for name in ("create_exp", "create_exp2"):
        original = getattr(interpreter.InterpreterBuilder, name)

        def counting(self, arg, _original=original):
            counted.append((kernel[0], arg.data.size))
            return _original(self, arg)

        monkeypatch.setattr(interpreter.InterpreterBuilder, name, counting)
    run = configs.Launch.run

    def named_run(launch):
        kernel[0] = launch.kernel.fn.__name__
        return run(launch)

    monkeypatch.setattr(configs.Launch, "run", named_run)
    monkeypatch.setattr(fused, "CONFIG", TileConfig(32, 16, 32))
    b = 128  # a multiple of every tile side: no padded pairs in the count
    z = torch.randn(b, 32, requires_grad=True)
    labels = torch.randint(0, 4, (b,))
    soft_nearest_neighbor_loss(z, labels, 0.5, backend="triton", reduction="sum").backward()
    # the pair kernels' exps (the row kernels' are a few per row)
    per_pair = sum(n for name, n in counted if name in ("_forward_kernel", "_backward_kernel")) / (b * b)
    assert per_pair == pytest.approx(2.0, abs=0.05)  # one forward, one backward


def test_bfloat16_is_refused_under_the_interpreter():
    from snnl import soft_nearest_neighbor_loss

    z = torch.randn(20, 8, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="cannot compute bfloat16 inputs correctly"):
        soft_nearest_neighbor_loss(z, torch.randint(0, 3, (20,)), backend="triton")


def _round_tf32(x: np.ndarray) -> np.ndarray:
    """To TF32, nearest, ties away from zero (cvt.rna.tf32.f32)."""
    bits = x.astype(np.float32).view(np.int32)
    return ((bits + 0x1000) & -0x2000).view(np.float32)


def _truncate_tf32(x: np.ndarray) -> np.ndarray:
    """What the tensor cores keep of an fp32 operand: the top 10 mantissa bits."""
    return (x.astype(np.float32).view(np.int32) & -0x2000).view(np.float32)


def _dots(a, b, precision):
    """a @ b.T as the kernels compute it on the GPU, emulated: 3xTF32 (hi, lo
    split in memory, the TF32 products exact, fp32 accumulation) or one TF32
    product of truncated operands."""
    if precision == "tf32":
        return (_truncate_tf32(a) @ _truncate_tf32(b).T).astype(np.float32)
    a_hi, b_hi = _round_tf32(a), _round_tf32(b)
    a_lo, b_lo = _truncate_tf32(a - a_hi), _truncate_tf32(b - b_hi)
    f32 = np.float32
    return (a_lo.astype(f32) @ b_hi.T.astype(f32)) + (a_hi.astype(f32) @ b_lo.T.astype(f32)) + (a_hi @ b_hi.T)


def test_3xtf32_error_is_within_its_documented_bound():
    # Documented bound (snnl/kernels/pair_kernels.py): for unit rows,
    # |dot error| <= (3 * 2^-22 + d * 2^-24), the second term fp32's own
    # accumulation, and the loss moves by at most twice the largest logit
    # error, 2 |dot error| / T.  One TF32 product is ~1000x worse.
    rng = np.random.default_rng(0)
    b, d, t = 512, 128, 0.1
    x = rng.standard_normal((b, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact = x @ x.T
    bound = 3 * 2.0**-22 + d * 2.0**-24
    errors = {p: np.abs(_dots(x.astype(np.float32), x.astype(np.float32), p) - exact).max() for p in ("tf32x3", "tf32")}
    assert errors["tf32x3"] <= bound
    assert errors["tf32"] > 100 * errors["tf32x3"]
    # the loss, rows against the float64 reference, from the emulated logits
    from snnl.loss.rowwise import rows_loss

    from .loss_cases import reference_rows

    labels = torch.from_numpy(rng.integers(0, 10, b))
    expected = reference_rows(torch.from_numpy(x), labels, torch.tensor(t, dtype=torch.float64), "cosine", 1e-5)
    s = torch.from_numpy((_dots(x.astype(np.float32), x.astype(np.float32), "tf32x3").astype(np.float64) - 1) / t)
    eye = torch.eye(b, dtype=torch.bool)
    same = (labels[:, None] == labels[None, :]) & ~eye
    lse_all = torch.logsumexp(s.masked_fill(eye, -np.inf), 1)
    lse_same = torch.logsumexp(s.masked_fill(~same, -np.inf), 1)
    emulated = rows_loss(lse_all, lse_same, 1e-5)
    assert (emulated - expected).abs().max() <= 2 * bound / t


def test_a_loss_call_makes_few_launches_and_one_synchronisation():
    # What the performance model prices (snnl.kernel_tools.op_counts): the
    # same operations at every size, seven Triton launches, and no host
    # synchronisation but the value check's (no nonzero / unique / bincount
    # for labels or far rows, no copy of the temperature from the host); with
    # check_values=False, none at all
    from snnl.kernel_tools.op_counts import count

    small, large = count(48, 20), count(300, 70)
    assert small["forward"]["operations"] == large["forward"]["operations"]
    assert small["backward"]["operations"] == large["backward"]["operations"]
    assert small["total"]["triton"] == 7 and small["total"]["operator"] == 2 and small["total"]["sync"] == 1
    assert [op for op in small["forward"]["operations"] if op.startswith("sync:")] == ["sync:_local_scalar_dense"]
    # what the performance model prices (README): 5 around the operators (the temperature's
    # tensor, the mean and its backward, the gradient buffer), 6 for the value check (one host
    # read of the points' sum, the temperature and the rows' NaN test)
    assert small["total"]["torch"] == 11
    learned = count(48, 20, "euclidean", learned_temperature=True)  # T's value joins the same check
    assert learned["total"]["sync"] == 1 and learned["total"]["triton"] == 7
    unchecked = count(48, 20, check_values=False)
    assert unchecked["total"]["sync"] == 0 and unchecked["total"]["torch"] == 5
