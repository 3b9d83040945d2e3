"""Shared pieces of the Triton fused recurrences (:mod:`gates.kernels.triton_gru`, :mod:`.triton_lstm`).

Both kernels run the whole time loop inside one program per (batch tile of 16 rows, model). Per step,
the recurrent products ``h W_hh^T`` are ``tl.dot`` loops over K-chunks of the previous state, read back
from the output the previous step wrote (after a barrier), for output chunks of ``BN`` hidden units;
the gate math of the mode is fused into each chunk. The recurrent weights are re-read every step and
stay hot in L1/L2 for the whole sequence (at H = 181 they do not fit in one multiprocessor's
registers). A cumax over the hidden units takes two passes per step: the row's log-sum-exp, then the
chunks with a running carry (backward: the gate gradients, then the chunks of
``p (Σ dy - exclusive cumsum(dy) - Σ dy·cumax)``). The backward kernel runs the loop in reverse, writes
each step's pre-activation gradients and leaves ``dW_hh`` and ``db_hh`` to one batched GEMM and one
sum after the loop (deterministic: no atomics).

Shapes carry a model dimension M: ``gi`` (M, T, B, R), ``h0`` (M, B, H), ``w_hh`` (M, R, H),
``b_hh`` (M, R); the grid is (batch tiles, M). R = NB·H (+ 2·H/C for master modes), blocks
in the order of :meth:`gates.mechanisms.Mechanism.block_rows`.

Kernel modes come from the one mode table, :data:`gates.kernels.modes.MODES` (``Mechanism.fused_mode``
names them): the activation of the decay gate (sigmoid, squared sigmoid, cumax), a refine gate, master
gates. Compile-time constants:
the mode flags and the tile sizes (powers of two ≥ 16, the smallest ``tl.dot`` tile the GPU compiler
accepts). T, B, H and the row counts are runtime arguments on the GPU (one compile serves every
shape, and runtime loop bounds keep the compiler from unrolling them); under the interpreter, which
cannot loop over a runtime bound with numpy ≥ 2.4, the loop bounds are passed as constants.

tanh is computed from a sigmoid (``tl.extra.cuda.libdevice`` does not run under
``TRITON_INTERPRET=1``); float32 products use TF32 unless
``torch.get_float32_matmul_precision()`` is ``"highest"`` (the small master-gate expansions always
run in IEEE float32). Scratch and saved activations are float32 for every input dtype.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources
from triton.runtime.interpreter import InterpretedFunction

from .modes import check_inputs, mode_spec

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _probe():
    pass


#: True when this process's kernels run on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``
#: was set when this module was imported).
INTERPRETED = isinstance(_probe, InterpretedFunction)


def kernel_device() -> str:
    """Device type the kernels run on in this process: ``"cpu"`` under the interpreter, else ``"cuda"``."""
    return "cpu" if INTERPRETED else "cuda"


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes of one launch: batch rows per program, hidden units per output chunk, K-chunk of the
    recurrent products, warps, pipeline stages."""

    block_b: int = 16
    block_n: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 2


def default_configs(hp: int) -> list[LaunchConfig]:
    """Configs tried in order for padded hidden size ``hp`` (the next one when the GPU runs out of resources).

    Chosen from the register and shared-memory use ptxas reports for sm_90 at H = 181 and 512.
    ``SOENSIM_TRITON_CONFIG="block_b,block_n,block_k,num_warps,num_stages"`` puts one in front.
    """
    if hp <= 64:
        ladder = [LaunchConfig(16, hp, hp, 4, 2)]
    else:
        ladder = [LaunchConfig(16, 64, 32, 8, 2), LaunchConfig(16, 64, 16, 8, 1)]
    env = os.environ.get("SOENSIM_TRITON_CONFIG")
    if env:
        ladder.insert(0, LaunchConfig(*(int(v) for v in env.split(","))))
    return ladder


def pow2(n: int) -> int:
    """Smallest power of two ≥ max(n, 16)."""
    return max(16, triton.next_power_of_2(n))


@dataclass(frozen=True)
class Geometry:
    """Sizes of one batched launch (M models, T steps, batch B, hidden H, rows R) and the mode's flags."""

    core: str
    M: int
    T: int
    B: int
    H: int
    R: int
    base: int  # H-sized blocks before the master blocks
    HM: int  # master units H/C (1 when the mode has none; unused then)
    act: int
    refine: bool
    master: int

    @property
    def HP(self) -> int:
        return pow2(self.H)

    @property
    def HMP(self) -> int:
        return pow2(self.HM)

    @property
    def cumax_blocks(self) -> int:
        """Blocks with a cumax over the hidden units: the decay gate, and the LSTM's input gate unless refined."""
        if self.act != 2:
            return 0
        return 2 if self.core == "lstm" and not self.refine else 1


def geometry(core: str, gi: torch.Tensor, states: dict[str, torch.Tensor], w_hh: torch.Tensor,
             b_hh: torch.Tensor | None, mode: str, chunk: int | None = None) -> Geometry:
    """Validate batched inputs (gi (M, T, B, R), states (M, B, H), w_hh (M, R, H), b_hh (M, R)).

    Each model's shapes are checked by :func:`gates.kernels.modes.check_inputs` (the master units come
    from ``w_hh``'s rows unless ``chunk`` is given); errors name the argument and the expected shape.
    """
    mode_spec(mode)
    tensors = {"gi": gi, **states, "w_hh": w_hh, "b_hh": b_hh}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    M = w_hh.shape[0] if w_hh.dim() == 3 else 0
    for name, t in tensors.items():
        dims = {"gi": 4, "w_hh": 3, "b_hh": 2}.get(name, 3)
        if M < 1 or t.dim() != dims or t.shape[0] != M:
            raise ValueError(f"{name}: expected {dims} dimensions with the model dimension M = {M} first "
                             f"(M, ...) = one model per leading index, got shape {tuple(t.shape)}")
    T, B, H, HM, spec = check_inputs(core, gi[0], tuple(s[0] for s in states.values()), w_hh[0], b_hh[0], mode,
                                     chunk)
    if gi.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"gi: dtype {gi.dtype} not supported; use one of {SUPPORTED_DTYPES}")
    if gi.device.type != kernel_device():
        raise ValueError(f"gi: the Triton kernels of this process run on {kernel_device()} "
                         f"(TRITON_INTERPRET=1 at import: CPU, else CUDA); gi is on {gi.device}")
    act, refine, master = spec.flags
    return Geometry(core, M, T, B, H, w_hh.shape[1], spec.main_blocks(core), max(HM, 1), act, refine, master)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: IEEE float32 when float32 products must be exact, else ``"tf32"``
    (Triton's default; ignored for 16-bit operands)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def kernel_constants(g: Geometry, dtype: torch.dtype) -> dict:
    """Compile-time constants and runtime loop bounds common to the kernels of both cores."""
    return dict(T=g.T, ACT=g.act, REFINE=g.refine, MASTER=g.master, HMP=g.HMP, PREC=dot_precision(dtype))


#: Runtime kernel arguments that bound loops (constants under the interpreter). Runtime bounds on the GPU:
#: one compile serves every length, and the compiler does not unroll the loops (register pressure).
LOOP_BOUNDS = ("T", "H", "HM")
#: Integer kernel arguments left unspecialised: one compile serves every shape.
RUNTIME_INTS = ("B", "H", "HM", "R", "T", "NS")
_CHOSEN: dict[tuple, LaunchConfig] = {}


def chosen_configs() -> list[dict]:
    """The launch config each kernel variant ran with in this process (kernel, mode flags, padded sizes, dtype)."""
    names = ("kernel", "core", "act", "refine", "master", "HP", "HMP", "dtype")
    return [dict(zip(names, key, strict=True), config=vars(cfg)) for key, cfg in _CHOSEN.items()]


def launch(kernel, g: Geometry, config: LaunchConfig | None, *args, **constants) -> None:
    """Launch ``kernel`` on the (batch tiles, M) grid with ``config``, or else the first config of
    :func:`default_configs` that fits the GPU (remembered per kernel variant); ``args[0]`` is ``gi``."""
    key = (kernel.__name__, g.core, g.act, g.refine, g.master, g.HP, g.HMP, str(args[0].dtype))
    if INTERPRETED:  # the interpreter cannot loop over a runtime bound (numpy >= 2.4)
        args = tuple(tl.constexpr(a) if n in LOOP_BOUNDS else a for n, a in zip(kernel.arg_names, args, strict=False))
        constants = {k: tl.constexpr(v) if k in LOOP_BOUNDS else v for k, v in constants.items()}
    if config is not None:
        ladder = [config]
    else:
        ladder = [_CHOSEN[key]] if key in _CHOSEN else default_configs(g.HP)
    for i, cfg in enumerate(ladder):
        grid = (triton.cdiv(g.B, cfg.block_b), g.M)
        try:
            kernel[grid](*args, BB=cfg.block_b, BN=min(cfg.block_n, g.HP), BK=min(cfg.block_k, g.HP),
                         BKM=min(cfg.block_k, g.HMP), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         **constants)
        except OutOfResources:
            if i == len(ladder) - 1:
                raise
            continue
        if config is None:
            _CHOSEN[key] = cfg
        return


def weight_grads(d_gh: torch.Tensor, h0: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``dW_hh = Σ_t d_gh_t^T h_{t-1}`` (M, R, H) and ``db_hh = Σ_t d_gh_t`` (M, R): one batched GEMM, one sum.

    ``d_gh`` (M, T, B, R) float32, ``h0`` (M, B, H), ``out`` (M, T, B, H) the states.
    """
    M, T, B, R = d_gh.shape
    d_w = torch.bmm(d_gh[:, 0].transpose(1, 2), h0.float())
    if T > 1:
        d_w.baddbmm_(d_gh[:, 1:].reshape(M, -1, R).transpose(1, 2), out[:, :-1].reshape(M, -1, out.shape[-1]).float())
    return d_w, d_gh.sum((1, 2))


def as_batched(gi, states: tuple, w_hh, b_hh) -> tuple[bool, torch.Tensor, tuple, torch.Tensor, torch.Tensor]:
    """``(single, gi, states, w_hh, b_hh)`` with a leading model dimension: a 3-D ``gi`` (T, B, R) is the
    single-model call (every tensor gains M = 1); states and ``b_hh`` given as None become zeros."""
    single = isinstance(gi, torch.Tensor) and gi.dim() == 3
    if single:
        def lead(t):
            return t.unsqueeze(0) if isinstance(t, torch.Tensor) else t

        gi, w_hh, b_hh, states = lead(gi), lead(w_hh), lead(b_hh), tuple(lead(s) for s in states)
    if isinstance(gi, torch.Tensor) and isinstance(w_hh, torch.Tensor) and gi.dim() == 4 and w_hh.dim() == 3:
        states = tuple(gi.new_zeros((gi.shape[0], gi.shape[2], w_hh.shape[2])) if s is None else s for s in states)
        b_hh = w_hh.new_zeros(w_hh.shape[:2]) if b_hh is None else b_hh
    return single, gi, states, w_hh, b_hh


# --------------------------------------------------------------------------- device functions
@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def plain_gate(a, SQ: tl.constexpr):
    """A [0, 1] gate: (value, sigmoid) with value sigmoid or sigmoid² (SQ)."""
    s = sigmoid(a)
    v = s
    if SQ:
        v = s * s
    return v, s


@triton.jit
def plain_gate_grad(d, s, SQ: tl.constexpr):
    """Gradient at the pre-activation of :func:`plain_gate` from its sigmoid ``s``."""
    if SQ:
        da = d * 2.0 * s * s * (1.0 - s)
    else:
        da = d * s * (1.0 - s)
    return da


@triton.jit
def candidate(a, SQ: tl.constexpr):
    """Candidate (value, tanh): tanh, or tanh·|tanh| (SQ)."""
    t = tanh(a)
    v = t
    if SQ:
        v = t * tl.abs(t)
    return v, t


@triton.jit
def candidate_grad(d, t, SQ: tl.constexpr):
    if SQ:
        da = d * 2.0 * tl.abs(t) * (1.0 - t * t)
    else:
        da = d * (1.0 - t * t)
    return da


@triton.jit
def cumax(a, valid):
    """cumsum(softmax(a)) along axis 1 over the ``valid`` columns: (value, softmax)."""
    a = tl.where(valid, a, float("-inf"))
    e = tl.exp(a - tl.max(a, axis=1)[:, None])
    e = tl.where(valid, e, 0.0)
    p = e / tl.sum(e, axis=1)[:, None]
    return tl.cumsum(p, axis=1), p


@triton.jit
def cumax_grad(dy, p):
    """Gradient at the pre-activation of :func:`cumax` from its softmax ``p``."""
    dp = tl.sum(dy, axis=1)[:, None] - tl.cumsum(dy, axis=1) + dy  # reverse cumulative sum
    return p * (dp - tl.sum(p * dp, axis=1)[:, None])


@triton.jit
def cumax_lse(h_src, w, bias, gi_t, gh_t, row0, R, H, offs_b, row_ok,
              BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """First pass of a cumax over the hidden units: the block's products ``h W^T + b`` chunk by chunk
    into ``gh_t`` and the row's log-sum-exp of ``gi + gh`` (BB,), accumulated online."""
    mx = tl.full((BB,), float("-inf"), dtype=tl.float32)
    sm = tl.zeros((BB,), dtype=tl.float32)
    for j0 in range(0, H, BN):
        offs_j = j0 + tl.arange(0, BN)
        acc = tl.zeros((BB, BN), dtype=tl.float32)
        for k0 in range(0, H, BK):
            offs_k = k0 + tl.arange(0, BK)
            acc = dot_rows(acc, load_state(h_src, offs_b, row_ok, offs_k, H), w, row0, offs_j, H, offs_k, H, PREC)
        gh = acc + row_bias(bias, row0, offs_j, H)
        store_tile(gh_t, offs_b, row_ok, R, row0, offs_j, H, gh)
        a = tl.where((offs_j < H)[None, :], load_tile(gi_t, offs_b, row_ok, R, row0, offs_j, H) + gh, float("-inf"))
        m_new = tl.maximum(mx, tl.max(a, axis=1))
        sm = sm * tl.exp(mx - m_new) + tl.sum(tl.exp(a - m_new[:, None]), axis=1)
        mx = m_new
    return mx + tl.log(sm)


@triton.jit
def cumax_chunk(a, lse, carry, valid):
    """One chunk of cumax(a) given the row's log-sum-exp: (values, softmax, carry after the chunk)."""
    p = tl.where(valid, tl.exp(a - lse[:, None]), 0.0)
    return carry[:, None] + tl.cumsum(p, axis=1), p, carry + tl.sum(p, axis=1)


@triton.jit
def cumax_backprop(dy_src, gi_t, gh_t, row0, R, H, lse, S, D, dst_a, dst_b, offs_b, row_ok,
                   BB: tl.constexpr, BN: tl.constexpr):
    """Second pass of a cumax backward: with dy (B, H) from ``dy_src``, S = Σ dy and D = Σ dy·cumax(a) per row,
    d a = p (S - E - D) (E the exclusive cumulative sum of dy), chunk by chunk into ``dst_a`` and ``dst_b``."""
    carry = tl.zeros((BB,), dtype=tl.float32)
    for j0 in range(0, H, BN):
        offs_j = j0 + tl.arange(0, BN)
        dy = load_tile(dy_src, offs_b, row_ok, H, 0, offs_j, H)
        a = load_tile(gi_t, offs_b, row_ok, R, row0, offs_j, H) + load_tile(gh_t, offs_b, row_ok, R, row0, offs_j, H)
        p = tl.where((offs_j < H)[None, :], tl.exp(a - lse[:, None]), 0.0)
        da = p * (S[:, None] - (carry[:, None] + tl.cumsum(dy, axis=1) - dy) - D[:, None])
        carry += tl.sum(dy, axis=1)
        store_tile(dst_a, offs_b, row_ok, R, row0, offs_j, H, da)
        store_tile(dst_b, offs_b, row_ok, R, row0, offs_j, H, da)


@triton.jit
def refine_gate(f, q):
    """Refined gate 2 q f + (1 - 2 q) f² (Gu et al. 2020, eq. 16)."""
    return 2.0 * q * f + (1.0 - 2.0 * q) * f * f


@triton.jit
def refine_grad(dg, f, q):
    """(df, d a_q) of :func:`refine_gate` with q = sigmoid(a_q)."""
    return dg * (2.0 * q + 2.0 * (1.0 - 2.0 * q) * f), dg * 2.0 * f * (1.0 - f) * q * (1.0 - q)


@triton.jit
def expansion(offs_m, offs_h, C, HM, H):
    """0/1 matrix (HMP, HP): master unit m feeds hidden units m*C .. m*C + C - 1."""
    hit = ((offs_h[None, :] // C) == offs_m[:, None]) & (offs_m[:, None] < HM) & (offs_h[None, :] < H)
    return tl.where(hit, 1.0, 0.0)


@triton.jit
def master_gates(a_mf, a_mi, valid_m, MASTER: tl.constexpr):
    """Compact master gates (f̃, ĩ) (BB, HMP) and their aux (softmax for cumax, else the sigmoid itself)."""
    if MASTER == 1:
        mf, pf = cumax(a_mf, valid_m)
        ci, pi = cumax(a_mi, valid_m)
        mi = 1.0 - ci
    else:
        mf = sigmoid(a_mf)
        mi = sigmoid(a_mi)
        pf = mf
        pi = mi
    return mf, mi, pf, pi


@triton.jit
def master_mix(g, i, mf_x, mi_x):
    """Effective gates with master gates: ω = f̃ ĩ, (g ω + f̃ - ω, i ω + ĩ - ω) (Gu et al. eq. 19-23)."""
    w = mf_x * mi_x
    return g * w + (mf_x - w), i * w + (mi_x - w)


@triton.jit
def master_mix_grad(dg, di, g, i, mf_x, mi_x):
    """Back through :func:`master_mix`: (dg, di, df̃, dĩ) per unit (expanded master gates)."""
    w = mf_x * mi_x
    dw = dg * (g - 1.0) + di * (i - 1.0)
    return dg * w, di * w, dg + dw * mi_x, di + dw * mf_x


@triton.jit
def master_gates_grad(dmf, dmi, pf, pi, MASTER: tl.constexpr):
    """Back through :func:`master_gates` (compact): gradients at the master pre-activations."""
    if MASTER == 1:
        da_mf = cumax_grad(dmf, pf)
        da_mi = cumax_grad(-dmi, pi)
    else:
        da_mf = dmf * pf * (1.0 - pf)
        da_mi = dmi * pi * (1.0 - pi)
    return da_mf, da_mi


@triton.jit
def load_tile(base, offs_b, row_ok, stride, col0, offs_c, ncols):
    """float32 tile (BB, N) of ``base[b * stride + col0 + c]``, zero outside rows ``row_ok`` / columns < ncols."""
    ptrs = base + offs_b[:, None] * stride + col0 + offs_c[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & (offs_c[None, :] < ncols), other=0.0).to(tl.float32)


@triton.jit
def store_tile(base, offs_b, row_ok, stride, col0, offs_c, ncols, value):
    ptrs = base + offs_b[:, None] * stride + col0 + offs_c[None, :]
    tl.store(ptrs, value, mask=row_ok[:, None] & (offs_c[None, :] < ncols))


@triton.jit
def load_state(h_src, offs_b, row_ok, offs_k, H):
    """K-chunk (BB, BK) of a state (B, H) in its own dtype (a ``tl.dot`` operand)."""
    return tl.load(h_src + offs_b[:, None] * H + offs_k[None, :], mask=row_ok[:, None] & (offs_k[None, :] < H),
                   other=0.0)


@triton.jit
def dot_rows(acc, hk, w, row0, offs_n, nrows, offs_k, H, PREC: tl.constexpr):
    """``acc + hk W[row0 + n, k]^T`` over rows n < nrows and columns k < H of W (R, H)."""
    wk = tl.load(w + (row0 + offs_n[None, :]) * H + offs_k[:, None],
                 mask=(offs_n[None, :] < nrows) & (offs_k[:, None] < H), other=0.0)
    return tl.dot(hk, wk, acc, input_precision=PREC)


@triton.jit
def dot_cols(acc, d_src, R, offs_b, row_ok, w, row0, offs_k, nrows, offs_n, H, PREC: tl.constexpr):
    """``acc + d[:, row0 + k] W[row0 + k, n]`` over rows k < nrows of W (R, H); d (B, R) float32."""
    wk = tl.load(w + (row0 + offs_k[:, None]) * H + offs_n[None, :],
                 mask=(offs_k[:, None] < nrows) & (offs_n[None, :] < H), other=0.0)
    dk = tl.load(d_src + offs_b[:, None] * R + row0 + offs_k[None, :],
                 mask=row_ok[:, None] & (offs_k[None, :] < nrows), other=0.0)
    return tl.dot(dk.to(wk.dtype), wk, acc, input_precision=PREC)


@triton.jit
def row_bias(b, row0, offs_n, nrows):
    """Bias entries ``b[row0 + n]`` as a (1, N) float32 row (zero for n ≥ nrows)."""
    return tl.load(b + row0 + offs_n, mask=offs_n < nrows, other=0.0).to(tl.float32)[None, :]
