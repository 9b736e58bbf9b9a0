"""The OpenAI-Triton selective-scan kernel against the reference scan, its launch function, the
dispatcher and the CUDA options of the PyTorch runner.

On CPU the kernel runs through Triton's interpreter. Triton decides interpreter-or-compiler when
each ``@triton.jit`` decorator runs, its own library functions (``tl.zeros``, ``tl.sigmoid``, ...)
included, which are decorated when ``triton`` is first imported; so TRITON_INTERPRET=1 must be set
before triton is imported (Triton 3.9 reads it through ``triton.knobs.runtime.interpret`` at each
decoration). Independent of what other tests imported, this file therefore runs the Triton work in
fresh processes (this file run as a script): one with TRITON_INTERPRET=1 runs every parity case
through the package's own kernel module, launcher and grid, and the launch function and dispatcher
as the TensorRT plugin uses them; one with TRITON_INTERPRET=0 compiles the kernel ahead of time for
an H100 (sm_90) with Triton's bundled ptxas, which needs no GPU, so the real compiler checks the
kernel too. The tests below judge the tensors those processes return. On a CUDA machine the parity
tests also run on the GPU in this process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                      # when run as a script (the worker processes)
    sys.path.insert(0, str(ROOT))

from m2s2l_deploy.ops import scan  # noqa: E402
from m2s2l_deploy.errors import UserError  # noqa: E402
from m2s2l_deploy.ops.scan import selective_scan_cpu, selective_scan_ref  # noqa: E402

from m2s2l_deploy.model.config import preset_config as _preset  # noqa: E402

H, W = _preset("tiny").height, _preset("tiny").width  # the tiny preset's input size
T = _preset("tiny").clip_len  # frames per clip of the tiny preset

CUDA = torch.cuda.is_available()
POSITIONAL = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus")


def _inputs(batch, dim, state, length, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    return dict(u=r(batch, dim, length).to(dtype), delta=(0.5 * r(batch, dim, length)).to(dtype),
                A=-torch.exp(r(dim, state)), B=r(*bc_shape).to(dtype), C=r(*bc_shape).to(dtype),
                D=r(dim), z=r(batch, dim, length).to(dtype), delta_bias=0.1 * r(dim))


# (batch, dim, state, length, groups, dtype, options): odd lengths, non-power-of-two channels,
# state sizes 8 and 16 (and 3, padded), shared and grouped B/C, every optional input on and off.
ALL = dict(D=True, z=True, delta_bias=True, softplus=True)
CASES = [
    (2, 6, 8, 7, None, torch.float32, ALL),
    (1, 12, 16, 33, 3, torch.float32, dict(D=True, z=False, delta_bias=True, softplus=True)),
    (2, 5, 16, 19, None, torch.float16, ALL),
    (1, 8, 8, 10, 2, torch.bfloat16, dict(D=False, z=True, delta_bias=False, softplus=False)),
    (3, 7, 3, 1, None, torch.float32, dict(D=True, z=False, delta_bias=False, softplus=True)),
    (1, 24, 16, 64, 4, torch.float32, dict(D=False, z=False, delta_bias=False, softplus=False)),
    (2, 3, 16, 5, None, torch.bfloat16, ALL),
]


def _case_args(case):
    batch, dim, state, length, groups, dtype, opts = case
    x = _inputs(batch, dim, state, length, groups, dtype, seed=batch * 100 + length)
    if not opts["softplus"]:
        x["delta"] = x["delta"].abs()      # without softplus delta must be positive (a decaying state)
    return dict(u=x["u"], delta=x["delta"], A=x["A"], B=x["B"], C=x["C"],
                D=x["D"] if opts["D"] else None, z=x["z"] if opts["z"] else None,
                delta_bias=x["delta_bias"] if opts["delta_bias"] else None, delta_softplus=opts["softplus"])


def _case_id(case):
    batch, dim, state, length, groups, dtype, opts = case
    on = "+".join(k for k, v in opts.items() if v) or "plain"
    return f"b{batch}-d{dim}-n{state}-L{length}-g{groups or 1}-{str(dtype)[6:]}-{on}"


def _strided_args():
    """Views as the model passes them: B/C sliced out of a projection, delta time-strided."""
    x = _inputs(2, 8, 8, 13, groups=2, seed=5)
    proj = torch.randn(2, 2, 3 * 8, 13, generator=torch.Generator().manual_seed(6))
    delta_t = x["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    assert delta_t.stride(-1) != 1
    return dict(u=x["u"], delta=delta_t, A=x["A"], B=proj[:, :, 8:16], C=proj[:, :, 16:24], D=x["D"], z=x["z"],
                delta_bias=x["delta_bias"], delta_softplus=True)


def _assert_parity(y, ref, dtype):
    """fp32: |y - ref| <= 1e-4 relative (elementwise, with a floor at 1e-5 of the output scale).
    16-bit: both are the fp32 result rounded to the output dtype, so they may differ by an ulp."""
    assert y.shape == ref.shape and y.dtype == ref.dtype
    y, ref = y.float().cpu(), ref.float().cpu()
    scale = ref.abs().max().item() or 1.0
    if dtype == torch.float32:
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5 * scale)
        assert (y - ref).abs().max().item() <= 1e-4 * scale
    else:
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(y, ref, rtol=2 * eps, atol=2 * eps * scale)


# -- worker processes (this file run as a script) -------------------------------------------------

def _worker_interpret(out_dir: Path) -> None:
    """TRITON_INTERPRET=1 was set before triton's import: run everything through the interpreter."""
    from safetensors.torch import save_file

    from m2s2l_deploy.ops.kernels import scan_triton
    from m2s2l_deploy.ops.launch import selective_scan_launch
    assert scan_triton.interpreted(), "the kernel module was not built by the interpreter"
    tensors, info = {}, {"interpreted": True}

    def keep(name, y, ref):
        tensors[f"{name}.y"], tensors[f"{name}.ref"] = y.detach().clone(), ref.detach().clone()

    for case in CASES:
        args = _case_args(case)
        keep(_case_id(case), scan_triton.selective_scan_triton(**args), selective_scan_ref(**args))

    args = _case_args((2, 10, 16, 21, 2, torch.float32, ALL))
    ref = selective_scan_ref(**args)
    for block_t in (4, 8):                                    # both time tiles, writing into out
        out = torch.full_like(args["u"], float("nan"))
        cfg = scan_triton.launch_config(16, 21, torch.float32, block_t=block_t)
        info[f"tile{block_t}_returns_out"] = scan_triton.selective_scan_triton(**args, out=out, config=cfg) is out
        keep(f"tile{block_t}", out, ref)

    args = _strided_args()
    keep("strided", scan_triton.selective_scan_triton(**args), selective_scan_ref(**args))

    args = _case_args(CASES[0])                               # a wrong scan, to show the check can fail
    keep("no_softplus", scan_triton.selective_scan_triton(**{**args, "delta_softplus": False}),
         selective_scan_ref(**args))

    out = torch.empty_like(args["u"])                         # the plugin's call, and the dispatcher
    info["launch_returns_out"] = selective_scan_launch(**args, out=out) is out
    keep("launch", out, selective_scan_ref(**args))
    keep("dispatch", scan.selective_scan_fn(*[args[k] for k in POSITIONAL], form="triton"), selective_scan_ref(**args))

    errors = {}
    four = {k: args[k][:, None].expand(-1, 4, -1, -1).contiguous() for k in ("B", "C")}
    for name, call in [("groups", lambda: scan_triton.selective_scan_triton(**{**args, **four})),
                       ("out", lambda: scan_triton.selective_scan_triton(**args, out=torch.empty(1, 1, 1)))]:
        try:
            call()
            errors[name] = None
        except ValueError as exc:
            errors[name] = str(exc)
    info["errors"] = errors
    save_file(tensors, str(out_dir / "tensors.safetensors"))
    (out_dir / "info.json").write_text(json.dumps(info))


def _signature(args):
    """Triton's type string of each runtime argument, as its launcher would specialise them."""
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return [("*" + names[a.dtype]) if isinstance(a, torch.Tensor) else ("i32" if -2**31 <= a < 2**31 else "i64")
            for a in args]


def _worker_compile(out_dir: Path) -> None:
    """TRITON_INTERPRET=0: compile exactly what a launch compiles, ahead of time, for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from m2s2l_deploy.ops.kernels import scan_triton
    info = {"interpreted": scan_triton.interpreted(), "triton": triton.__version__, "variants": {}}
    try:
        scan_triton.selective_scan_triton(**_case_args(CASES[0]))
        info["cpu_error"] = None
    except RuntimeError as exc:
        info["cpu_error"] = str(exc)
    kernel = scan_triton._selective_scan_fwd_kernel
    for name, case in [("fp32", (2, 64, 16, 256, None, torch.float32, ALL)),
                       ("bf16-grouped", (2, 64, 16, 256, 4, torch.bfloat16, ALL))]:
        grid, launch_args, meta, _ = scan_triton.kernel_arguments(**_case_args(case))
        constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
        runtime = [p.name for p in kernel.params if not p.is_constexpr]
        constexprs = {k: v for k, v in meta.items() if k != "num_warps"}
        aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(launch_args)
                   if isinstance(a, torch.Tensor) or a % 16 == 0}
        src = ASTSource(fn=kernel, signature=dict(zip(runtime, _signature(launch_args))), constexprs=constexprs,
                        attrs=aligned)
        binary = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": meta["num_warps"], "num_stages": meta["STAGES"]})
        ptx = binary.asm["ptx"]
        info["variants"][name] = {
            "constexprs_seen": sorted(constexpr_names), "constexprs_passed": sorted(constexprs),
            "sm_90": ".target sm_90" in ptx, "cp_async": "cp.async" in ptx,
            "cubin_bytes": len(binary.asm["cubin"]), "shared_bytes": binary.metadata.shared,
        }
    (out_dir / "info.json").write_text(json.dumps(info))


def _run_worker(mode: str, tmp: Path) -> Path:
    env = dict(os.environ, TRITON_INTERPRET="1" if mode == "interpret" else "0", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, __file__, mode, str(tmp)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    if proc.returncode != 0:
        if "cannot compile for CUDA" in proc.stderr:
            pytest.skip(proc.stderr.strip().splitlines()[-1])
        raise AssertionError(f"{mode} worker failed:\n{proc.stderr[-4000:]}")
    return tmp


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    pytest.importorskip("triton")
    from safetensors.torch import load_file
    out = _run_worker("interpret", tmp_path_factory.mktemp("triton-interpret"))
    return load_file(str(out / "tensors.safetensors")), json.loads((out / "info.json").read_text())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    pytest.importorskip("triton")
    out = _run_worker("compile", tmp_path_factory.mktemp("triton-compile"))
    return json.loads((out / "info.json").read_text())


# -- the kernel through Triton's interpreter ------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_interpreted_kernel_matches_reference(interpreted, case):
    tensors, info = interpreted
    assert info["interpreted"]
    name = _case_id(case)
    _assert_parity(tensors[f"{name}.y"], tensors[f"{name}.ref"], case[5])


def test_interpreted_kernel_both_time_tiles_write_out(interpreted):
    tensors, info = interpreted
    for block_t in (4, 8):
        assert info[f"tile{block_t}_returns_out"]
        _assert_parity(tensors[f"tile{block_t}.y"], tensors[f"tile{block_t}.ref"], torch.float32)


def test_interpreted_kernel_reads_strided_inputs(interpreted):
    tensors, _ = interpreted
    _assert_parity(tensors["strided.y"], tensors["strided.ref"], torch.float32)


def test_parity_check_rejects_a_wrong_scan(interpreted):
    """The comparison can fail: the kernel without softplus is not the reference with it."""
    tensors, _ = interpreted
    with pytest.raises(AssertionError):
        _assert_parity(tensors["no_softplus.y"], tensors["no_softplus.ref"], torch.float32)


def test_launch_function_and_dispatcher_under_triton_interpret(interpreted):
    """What the TensorRT plugin's tests do: with TRITON_INTERPRET=1 the launch function (writing
    into ``out``) and the dispatcher forced to 'triton' run the kernel on CPU tensors."""
    tensors, info = interpreted
    assert info["launch_returns_out"]
    _assert_parity(tensors["launch.y"], tensors["launch.ref"], torch.float32)
    _assert_parity(tensors["dispatch.y"], tensors["dispatch.ref"], torch.float32)


def test_kernel_rejects_bad_shapes(interpreted):
    _, info = interpreted
    assert "not divisible by the 4 groups" in info["errors"]["groups"]
    assert "out must be" in info["errors"]["out"]


# -- the real compiler, ahead of time for an H100 --------------------------------------------------

@pytest.mark.parametrize("variant", ["fp32", "bf16-grouped"])
def test_kernel_compiles_for_h100(compiled, variant):
    """Triton's compiler (not the interpreter) builds the kernel for sm_90 with exactly the
    arguments and constexprs a launch passes, and the time loop is software-pipelined (cp.async)."""
    assert not compiled["interpreted"]
    v = compiled["variants"][variant]
    assert v["constexprs_seen"] == v["constexprs_passed"]        # annotations are seen as constexpr
    assert v["sm_90"] and v["cp_async"] and v["cubin_bytes"] > 1000


def test_compiled_kernel_refuses_cpu_tensors(compiled):
    assert "needs CUDA tensors" in compiled["cpu_error"]


def test_launch_config_is_fixed_and_bounded():
    pytest.importorskip("triton")
    from m2s2l_deploy.ops.kernels.scan_triton import launch_config
    cfg16 = launch_config(16, 4096, torch.float32)
    assert (cfg16.block_d, cfg16.block_t, cfg16.num_warps) == (8, 8, 1)     # 4 lanes x 4 states per channel
    assert launch_config(8, 4096, torch.float32).block_d == 16
    assert launch_config(16, 3, torch.float32).block_t == 4                  # short sequences
    assert launch_config(16, 4096, torch.float16).stages > cfg16.stages
    with pytest.raises(ValueError):
        launch_config(16, 4096, torch.float32, block_t=16)


# -- launch function on CPU without the interpreter, dispatcher rule -------------------------------

def test_launch_function_on_cpu_uses_the_torch_form(monkeypatch):
    from m2s2l_deploy.ops.launch import selective_scan_launch
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _case_args(CASES[0])
    expected = selective_scan_cpu(**args)
    out = torch.zeros_like(args["u"])
    assert selective_scan_launch(**args, out=out) is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out must be"):
        selective_scan_launch(**args, out=torch.zeros(1))


def test_dispatch_rule():
    rule = scan.choose_scan_form
    assert rule(on_cuda=False, needs_grad=False, have_mamba_ssm=True, have_triton=True) == "cpu"
    assert rule(on_cuda=True, needs_grad=False, have_mamba_ssm=True, have_triton=True) == "mamba_ssm"
    assert rule(on_cuda=True, needs_grad=False, have_mamba_ssm=False, have_triton=True) == "triton"
    assert rule(on_cuda=True, needs_grad=True, have_mamba_ssm=False, have_triton=True) == "parallel"
    assert rule(on_cuda=True, needs_grad=False, have_mamba_ssm=False, have_triton=False) == "parallel"


def test_needs_grad_follows_inference_mode():
    w = torch.ones(3, requires_grad=True)
    assert scan._needs_grad(torch.ones(3), w)
    assert not scan._needs_grad(torch.ones(3), torch.ones(3))
    with torch.no_grad():
        assert not scan._needs_grad(w)
    with torch.inference_mode():
        assert not scan._needs_grad(w)


def test_forced_forms_on_cpu():
    args = _case_args(CASES[0])
    positional = [args[k] for k in POSITIONAL]
    ref = selective_scan_ref(*positional)
    automatic = "numba" if scan._numba_kernel() is not None else "cpu"      # the CPU default, training or not
    torch.testing.assert_close(scan.selective_scan_fn(*positional),
                               scan.selective_scan_fn(*positional, form=automatic), rtol=0, atol=0)
    for form in ("ref", "parallel", "cpu", "numba"):
        torch.testing.assert_close(scan.selective_scan_fn(*positional, form=form), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown scan form"):
        scan.selective_scan_fn(*positional, form="fast")


# -- TorchRunner options ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from m2s2l_deploy.contract import InputContract
    from m2s2l_deploy.model import M2S2L, preset_config
    from m2s2l_deploy.model.checkpoint import save_checkpoint
    torch.manual_seed(0)
    cfg = preset_config("tiny")
    contract = InputContract(cfg.height, cfg.width, cfg.in_channels, clip_len=cfg.clip_len)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", M2S2L(cfg).eval(), contract, {})


def _clips(batch=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, T, 1, H, W)).astype(np.float32)


@pytest.mark.skipif(CUDA, reason="checks the refusals of a machine without CUDA")
@pytest.mark.parametrize("kwargs,needle", [
    (dict(dtype="fp16"), "dtype fp16: CUDA only"),
    (dict(dtype="bf16"), "dtype bf16: CUDA only"),
    (dict(cuda_graph=True), "CUDA graphs: CUDA only"),
    (dict(compile=True), "torch.compile: CUDA only"),
    (dict(device="cuda"), "sees no CUDA GPU"),
    (dict(dtype="fp8"), "unknown dtype"),
    (dict(device="gpu"), "unknown device"),
])
def test_runner_refuses_cuda_options_without_cuda(tiny_checkpoint, kwargs, needle):
    from m2s2l_deploy.runners import TorchRunner
    with pytest.raises(UserError, match=needle):
        TorchRunner(tiny_checkpoint, **kwargs)


def test_runner_fp32_cpu_matches_the_model(tiny_checkpoint):
    from m2s2l_deploy.model.checkpoint import load_checkpoint
    from m2s2l_deploy.runners import TorchRunner
    clips = _clips()
    with TorchRunner(tiny_checkpoint, device="cpu", dtype="fp32", extras=True) as runner:
        out = runner.infer(clips)
        assert runner.name == "torch-cpu"
    model = load_checkpoint(tiny_checkpoint).build_model()
    with torch.inference_mode():
        ref = model.outputs(torch.from_numpy(clips))
    for k in ("score_map", "pred_frame", "pred_motion", "frame_score", "components"):
        np.testing.assert_allclose(out[k], ref[k].numpy(), rtol=1e-5, atol=1e-6)


# -- CUDA (runs where a GPU is present, e.g. on the lent H100) -------------------------------------

def _cuda_kernel_module():
    from m2s2l_deploy.ops.kernels import scan_triton
    if scan_triton.interpreted():
        pytest.skip("triton was imported under TRITON_INTERPRET=1 in this process")
    return scan_triton


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_cuda_kernel_matches_reference(case):
    kernel = _cuda_kernel_module()
    args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _case_args(case).items()}
    _assert_parity(kernel.selective_scan_triton(**args), selective_scan_ref(**args), case[5])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_dispatcher_picks_triton_for_inference_only():
    _cuda_kernel_module()
    if scan._mamba_ssm_kernel() is not None:
        pytest.skip("mamba-ssm is installed: it is the CUDA form then")
    args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _case_args(CASES[0]).items()}
    positional = [args[k] for k in POSITIONAL]
    with torch.inference_mode():
        _assert_parity(scan.selective_scan_fn(*positional), selective_scan_ref(*positional), torch.float32)
    leaf = args["u"].clone().requires_grad_(True)
    y = scan.selective_scan_fn(leaf, *positional[1:])
    y.sum().backward()                                             # training keeps an autograd path
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_runner_graph_and_half_precision(tiny_checkpoint):
    from m2s2l_deploy.runners import TorchRunner
    clips = _clips(batch=2)
    ref = TorchRunner(tiny_checkpoint, device="cpu").infer(clips)
    eager = TorchRunner(tiny_checkpoint, device="cuda").infer(clips)
    graphed_runner = TorchRunner(tiny_checkpoint, device="cuda", cuda_graph=True)
    graphed = graphed_runner.infer(clips)
    again = graphed_runner.infer(clips[::-1].copy())               # replay with new input data
    half = TorchRunner(tiny_checkpoint, device="cuda", dtype="fp16").infer(clips)
    for k in ("pred_frame", "frame_score"):
        np.testing.assert_allclose(eager[k], ref[k], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(graphed[k], eager[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(again[k], eager[k][::-1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(half[k], ref[k], rtol=5e-2, atol=5e-2)



@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_runner_compile_matches_eager(tiny_checkpoint):
    from m2s2l_deploy.runners import TorchRunner
    clips = _clips(batch=2)
    eager = TorchRunner(tiny_checkpoint, device="cuda").infer(clips)
    runner = TorchRunner(tiny_checkpoint, device="cuda", compile=True, cuda_graph=True)
    assert runner.name == "torch-cuda-compile-graph"
    compiled = runner.infer(clips)
    for k in ("pred_frame", "frame_score"):
        np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-4, atol=1e-5)

if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError as exc:
        if mode == "compile":
            sys.exit(f"Triton cannot compile for CUDA here: {exc}")
    {"interpret": _worker_interpret, "compile": _worker_compile}[mode](out_dir)
