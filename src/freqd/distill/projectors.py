"""Projectors that map student features into the teacher's space.

All multi-expert modules keep their E experts as *stacked* weights and evaluate them with
batched matrix products (no Python loop over experts), so that a 5- or 30-expert
projector costs a few GEMMs whatever E is:

- :class:`ExpertProjector`: the FreqD / FitNet projector, the average of E expert MLPs
  ``Dropout -> Linear(d_in, h) -> ReLU -> Dropout -> Linear(h, d_out)`` with independent
  dropout masks per expert.
- :class:`GumbelExperts`: the DE / HTD expert set, a selection net ``softmax(W t)`` over
  E experts ``Linear(d_s, (d_s+d_t)//2) -> ReLU -> Linear(., d_t)`` mixed by a
  Gumbel-softmax draw with a temperature.
- :class:`LinearProjector`, :class:`OrthogonalProjector` (VkD),
  :class:`LowRankBridge` (PHR's personalised bridge, low rank so it fits d_t = 2000).

Everything follows the input's device; nothing here is tied to CUDA.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "ExpertBank",
    "ExpertProjector",
    "GumbelExperts",
    "LinearProjector",
    "LowRankBridge",
    "OrthogonalProjector",
    "annealed_temperature",
    "gumbel_softmax_weights",
    "keep_mask",
]


def _uniform_(t: Tensor, fan_in: int) -> Tensor:
    """``nn.Linear``'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        return t.uniform_(-bound, bound)


class _MaskedHidden(torch.autograd.Function):
    """``h = ReLU(x_e W1_e + b1_e) * m`` for all experts e, written straight into the
    [N, E*h] layout, with ``m`` a 0/1 mask (bool or floating).

    Forward: one batched GEMM into a strided view of the output with the bias folded in
    (a column of ones beside ``x_e``, a row ``b1_e`` under ``W1_e``: no pass that writes the
    bias first), then ReLU and the mask in place. Backward: ``dL/dpre = g * [h > 0]`` in one
    pass (``threshold_backward``, ReLU's own kernel: h >= 0, and h > 0 exactly where the
    pre-activation is positive and the unit kept), then two batched GEMMs on strided views
    (the bias gradient is the ones column's row of the first). Only ``h`` (the output, alive
    anyway) and the small ``[x_e | 1]`` copies are saved."""

    @staticmethod
    def forward(ctx, x, w1, b1, mask_in, keep_hid):
        E, d_in, H = w1.shape
        N = x.shape[0]
        xa = x.new_empty(E, N, d_in + 1)
        if mask_in is not None:
            torch.mul(x.unsqueeze(0), mask_in, out=xa[:, :, :d_in])
        else:
            xa[:, :, :d_in] = x
        xa[:, :, d_in] = 1.0
        wa = torch.cat([w1, b1.unsqueeze(1)], dim=1)  # [E, d_in + 1, H]
        out = torch.empty(N, E, H, device=x.device, dtype=x.dtype)
        torch.bmm(xa, wa, out=out.permute(1, 0, 2))
        h = out.view(N, E * H).relu_()
        if keep_hid is not None:
            h.mul_(keep_hid)
        ctx.save_for_backward(xa, w1, mask_in, h)
        return h

    @staticmethod
    def backward(ctx, g):
        xa, w1, mask_in, h = ctx.saved_tensors
        E, d_in, H = w1.shape
        N = h.shape[0]
        gp = torch.ops.aten.threshold_backward(g.contiguous(), h, 0.0).view(N, E, H).permute(1, 0, 2)
        gx = gw1 = gb1 = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gwa = torch.bmm(xa.transpose(1, 2), gp)  # [E, d_in + 1, H]
            gw1, gb1 = gwa[:, :d_in], gwa[:, d_in]
        if ctx.needs_input_grad[0]:
            gxe = torch.bmm(gp, w1.transpose(1, 2))
            gx = (gxe * mask_in).sum(0) if mask_in is not None else gxe.sum(0)
        return gx, gw1, gb1, None, None


def keep_mask(shape, keep: float, device, dtype: torch.dtype = torch.bool) -> Tensor:
    """A Bernoulli(``keep``) mask of ``shape`` (bool, or 0/1 values of a floating ``dtype``),
    drawn from torch's global generator (checkpointed by the trainer, so resumed runs draw
    the same masks).

    On the CPU, torch's generator (MT19937) is the slowest part of a FreqD step (the hidden
    dropout mask has |neighbourhood| x E x h entries); there one 63-bit seed is drawn from
    torch's generator and the mask from numpy's PCG64 raw 32-bit words (about 4x faster
    than torch.rand, and still exactly reproducible from torch's state). Elsewhere
    torch.rand is used as is."""
    device = torch.device(device)
    if device.type == "cpu":
        import numpy as np

        seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64))
        n = math.prod(shape)
        # uniform 32-bit words, two per raw 64-bit draw, against keep * 2^32 (resolution
        # 2^-32, finer than a float32 uniform's 2^-24; no float conversion)
        words = np.random.PCG64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
        thr = np.uint32(min(int(keep * 2.0**32), 2**32 - 1))
        if dtype == torch.bool:
            return torch.from_numpy((words < thr).reshape(tuple(shape)))
        out = np.empty(n, dtype=np.float32)
        np.less(words, thr, out=out, casting="unsafe")  # 1.0 / 0.0
        return torch.from_numpy(out.reshape(tuple(shape))).to(dtype)
    m = torch.rand(tuple(shape), device=device) < keep
    return m if dtype == torch.bool else m.to(dtype)


class ExpertBank(nn.Module):
    """E two-layer MLPs ``d_in -> hidden -> d_out`` (ReLU) held as stacked weights.

    ``w1`` [E, d_in, h], ``b1`` [E, h], ``w2`` [E, h, d_out], ``b2`` [E, d_out]: expert ``e``
    equals ``nn.Linear`` layers with weights ``w1[e].T`` / ``w2[e].T``. The hidden layers are
    laid out side by side, [N, E*h] (:meth:`hidden_flat`), and the experts' outputs are
    combined by per-row weights ``c`` [N, E] (the mean: ``c = 1/E``) *inside* one GEMM,
    ``sum_e c_e (h_e W2_e + b2_e) = [c_1 h_1 | ... | c_E h_E] @ vstack(W2_e) + c @ b2``
    (:meth:`combine_flat`), so neither a transposed copy of the hidden layers nor the
    [N, E, d_out] stack of expert outputs is ever materialised.
    """

    def __init__(self, d_in: int, hidden: int, d_out: int, n_experts: int):
        super().__init__()
        if min(d_in, hidden, d_out, n_experts) < 1:
            raise ValueError(f"ExpertBank: sizes must be >= 1, got {(d_in, hidden, d_out, n_experts)}")
        self.d_in, self.hidden, self.d_out, self.n_experts = d_in, hidden, d_out, n_experts
        E = n_experts
        self.w1 = nn.Parameter(_uniform_(torch.empty(E, d_in, hidden), d_in))
        self.b1 = nn.Parameter(_uniform_(torch.empty(E, hidden), d_in))
        self.w2 = nn.Parameter(_uniform_(torch.empty(E, hidden, d_out), hidden))
        self.b2 = nn.Parameter(_uniform_(torch.empty(E, d_out), hidden))

    def hidden_layer(self, x: Tensor, mask_in: Tensor | None = None) -> Tensor:
        """ReLU(x W1_e + b1_e) for every expert: [E, N, h]. ``mask_in`` [E, N, d_in] (already
        scaled by 1/keep) gives each expert its own masked copy of ``x``."""
        E, N = self.n_experts, x.shape[0]
        if mask_in is None:
            # one GEMM for all experts: [N, d_in] @ [d_in, E*h]
            w = self.w1.permute(1, 0, 2).reshape(self.d_in, E * self.hidden)
            pre = torch.addmm(self.b1.reshape(-1), x, w).view(N, E, self.hidden).transpose(0, 1)
        else:
            xe = x.unsqueeze(0) * mask_in
            pre = torch.baddbmm(self.b1.unsqueeze(1), xe, self.w1)
        return torch.relu(pre)

    def hidden_flat(self, x: Tensor, mask_in: Tensor | None = None, keep_hid: Tensor | None = None) -> Tensor:
        """``ReLU(x_e W1_e + b1_e) * keep_hid`` for every expert, laid out [N, E*h] (expert
        e in columns e*h..(e+1)*h-1), the layout :meth:`combine_flat` multiplies without a
        copy. ``mask_in`` [E, N, d_in]: per-expert input masks (any values, e.g. 0 or
        1/keep); ``keep_hid`` [N, E*h]: a hidden-dropout mask (bool, or 0/1 values) (the 1/keep rescaling is
        left to the caller, see :meth:`ExpertProjector.expert_hidden`). Equals
        ``(hidden_layer(x, mask_in) * keep_hid[E-major view])`` in values and gradients
        (tests/test_projectors.py), with one fused pass each way instead of separate ReLU,
        mask and transpose passes over the [N, E*h] stack."""
        E, H = self.n_experts, self.hidden
        if mask_in is None and keep_hid is None:
            w = self.w1.permute(1, 0, 2).reshape(self.d_in, E * H)
            return torch.addmm(self.b1.reshape(-1), x, w).relu_()  # addmm's backward needs no output
        return _MaskedHidden.apply(x, self.w1, self.b1, mask_in, keep_hid)

    def combine_flat(self, h: Tensor, scale: float = 1.0, weights: Tensor | None = None) -> Tensor:
        """The experts' outputs combined, for ``h`` [N, E*h] from :meth:`hidden_flat`: [N, d_out].

        ``weights`` None: ``scale * sum_e h_e W2_e + mean_e b2_e`` (``scale`` = 1/E for the
        plain mean, 1/(E keep) after hidden dropout); ``weights`` [N, E] (DE / HTD's Gumbel
        mix): ``sum_e c[n, e] (h_e W2_e + b2_e)``. One GEMM over the stacked output layers
        ``vstack(W2_e)``, so the [N, E, d_out] stack of expert outputs is never formed."""
        w2 = self.w2.reshape(self.n_experts * self.hidden, self.d_out)
        if weights is None:
            return torch.addmm(self.b2.mean(0), h, w2, alpha=scale)
        n = h.shape[0]
        hw = (h.view(n, self.n_experts, self.hidden) * weights.unsqueeze(-1)).view(n, -1)
        return torch.addmm(weights @ self.b2, hw, w2, alpha=scale)

    def expert_outputs(self, x: Tensor) -> Tensor:
        """Every expert's output [N, E, d_out] (slow reference / analysis only)."""
        h = self.hidden_layer(x)
        return (torch.bmm(h, self.w2) + self.b2.unsqueeze(1)).transpose(0, 1)


class ExpertProjector(nn.Module):
    """Average of E expert MLPs (FREQD.md section 3.3)::

        P(x) = 1/E sum_e  Linear2_e(Dropout(ReLU(Linear1_e(Dropout(x)))))

    ``hidden`` defaults to ``d_out``. In training mode each expert draws its own dropout
    masks. For reproducible comparisons (e.g. a batch-local path against a full-table
    path) pass explicit masks from :meth:`sample_masks`; their rows can be indexed
    (``m_in[:, rows]``, ``m_hid[:, rows]``) so that a subset of rows sees exactly the
    masks it would have seen in the full computation.
    """

    def __init__(self, d_in: int, d_out: int, n_experts: int = 5, hidden: int | None = None,
                 dropout: float = 0.2):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ExpertProjector: dropout must be in [0, 1), got {dropout}")
        self.d_in, self.d_out = d_in, d_out
        self.n_experts = n_experts
        self.hidden = hidden if hidden is not None else d_out
        self.dropout = float(dropout)
        self.bank = ExpertBank(d_in, self.hidden, d_out, n_experts)

    def sample_masks(self, n_rows: int, device=None, generator: torch.Generator | None = None,
                     ) -> tuple[Tensor, Tensor]:
        """Inverted-dropout masks ``(m_in [E, n, d_in], m_hid [E, n, h])``, entries 0 or
        1/(1-p), independent across experts, rows and features."""
        keep = 1.0 - self.dropout
        E = self.n_experts
        device = device if device is not None else self.bank.w1.device
        dtype = self.bank.w1.dtype
        m_in = torch.empty(E, n_rows, self.d_in, device=device, dtype=dtype)
        m_hid = torch.empty(E, n_rows, self.hidden, device=device, dtype=dtype)
        m_in.bernoulli_(keep, generator=generator).div_(keep)
        m_hid.bernoulli_(keep, generator=generator).div_(keep)
        return m_in, m_hid

    def expert_hidden(self, x: Tensor, masks: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, float]:
        """The experts' hidden layers ``h`` [N, E*h] after dropout and the factor ``scale``
        with ``forward(x) = bank.combine_flat(h, scale)`` (1/E, or 1/(E keep) when units were
        dropped: the inverted-dropout rescaling is folded into the last GEMM).

        ``masks``: ``(m_in [E, N, d_in], m_hid [E, N, h])`` as :meth:`sample_masks` draws
        them (entries 0 or 1/keep), applied whatever the train/eval mode; otherwise the
        module's own dropout in training mode (input masks from torch's generator, the
        hidden mask from :func:`keep_mask`)."""
        E, N, p = self.n_experts, x.shape[0], self.dropout
        if masks is None and not (self.training and p > 0):
            return self.bank.hidden_flat(x), 1.0 / E
        keep = 1.0 - p
        if masks is not None:
            m_in, m_hid = masks
            keep_hid = (m_hid != 0).to(x.dtype).transpose(0, 1).reshape(N, E * self.hidden)
        else:
            m_in = torch.empty(E, N, self.d_in, device=x.device, dtype=x.dtype).bernoulli_(keep).div_(keep)
            # 0/1 floats: multiplying by a bool mask takes torch's casting path, ~3x slower
            keep_hid = keep_mask((N, E * self.hidden), keep, x.device, x.dtype)
        return self.bank.hidden_flat(x, m_in, keep_hid), 1.0 / (E * keep)

    def forward(self, x: Tensor, masks: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Project ``x`` [N, d_in] to [N, d_out]. ``masks`` overrides the module's own
        dropout (applied whatever the train/eval mode)."""
        return self.bank.combine_flat(*self.expert_hidden(x, masks))

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, n_experts={self.n_experts}, "
                f"hidden={self.hidden}, dropout={self.dropout}")


def gumbel_softmax_weights(probs: Tensor, temperature: float, eps: float = 1e-10) -> Tensor:
    """``softmax((log(probs + eps) + g) / T)`` with g ~ Gumbel(0, 1) i.i.d. (DE / HTD)."""
    # -log(Exp(1)) ~ Gumbel(0, 1); follows probs' device and the global RNG
    g = -torch.empty_like(probs).exponential_().log()
    return torch.softmax((torch.log(probs + eps) + g) / temperature, dim=-1)


class GumbelExperts(nn.Module):
    """DE's expert set (Kang et al., CIKM'20), also HTD's group assignment.

    - selection net: ``alpha = softmax(W t + b)`` over E experts, from the *teacher* feature;
    - experts ``f_k``: MLP ``d_s -> hidden -> d_t`` (ReLU), hidden = (d_s + d_t) // 2;
    - output ``sum_k z_k f_k(s)`` with ``z`` a Gumbel-softmax draw at temperature T
      (with E = 1 the single expert is used as is).
    """

    def __init__(self, d_student: int, d_teacher: int, n_experts: int,
                 hidden: int | None = None):
        super().__init__()
        self.d_student, self.d_teacher, self.n_experts = d_student, d_teacher, n_experts
        self.hidden = hidden if hidden is not None else (d_student + d_teacher) // 2
        self.bank = ExpertBank(d_student, self.hidden, d_teacher, n_experts)
        self.selection_net = nn.Linear(d_teacher, n_experts)

    def selection(self, t: Tensor) -> Tensor:
        """Selection distribution ``softmax(W t + b)``: [N, E]."""
        return torch.softmax(self.selection_net(t), dim=-1)

    @torch.no_grad()
    def groups(self, t: Tensor) -> Tensor:
        """Hard assignment: argmax of the selection distribution (LongTensor [N])."""
        return self.selection_net(t).argmax(-1)

    def weights(self, t: Tensor, temperature: float) -> Tensor:
        """Gumbel-softmax expert weights [N, E] (all ones when E = 1)."""
        if self.n_experts == 1:
            return torch.ones(t.shape[0], 1, device=t.device, dtype=t.dtype)
        return gumbel_softmax_weights(self.selection(t), temperature)

    def forward(self, s: Tensor, t: Tensor, temperature: float) -> Tensor:
        """``sum_k z_k f_k(s)`` [N, d_t] with z drawn from the teacher's selection."""
        z = self.weights(t, temperature)
        return self.bank.combine_flat(self.bank.hidden_flat(s), weights=z)


class LinearProjector(nn.Module):
    """A single ``Linear(d_in, d_out)`` (FitNet's ``fit_linear``)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class OrthogonalProjector(nn.Module):
    """Bias-free linear map with orthonormal columns (VkD, Miles et al. CVPR'24), via
    ``torch.nn.utils.parametrizations.orthogonal``: for d_out >= d_in, W^T W = I."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        from torch.nn.utils.parametrizations import orthogonal

        self.linear = orthogonal(nn.Linear(d_in, d_out, bias=False))

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class LowRankBridge(nn.Module):
    """PHR's personalised bridge with a low-rank meta-network (our re-implementation).

    PHR (Kang et al., Knowledge-Based Systems 2022) maps each entity's student feature
    with its own bridge ``W_e`` generated from the teacher feature ``t_e``. A full bridge
    needs a generator output of size d_t * d_s (1.7B generator weights for d_t = 2000), so
    we generate a rank-``r`` correction of a shared bridge::

        h_e = ReLU(A t_e + a)                               (meta-network, size ``hidden``)
        U_e[t, r] = sum_k h_ek Uw[k, r, t] + Ub[r, t]        (d_t x r)
        V_e[s, r] = sum_k h_ek Vw[k, s, r] + Vb[s, r]        (d_s x r)
        W_e = W0 + U_e V_e^T                                 (W0 shared, optional)

    and never materialise ``W_e``, ``U_e`` or ``V_e``: ``c = V_e^T s_e`` is one GEMM over
    the outer product ``h_e (x) s_e`` and ``U_e c`` one GEMM over ``h_e (x) c``; the cost per
    entity is O(hidden (d_s + d_t) r), memory O(N hidden max(d_s, r)).
    """

    def __init__(self, d_student: int, d_teacher: int, rank: int = 8, hidden: int = 128,
                 base: bool = True):
        super().__init__()
        self.d_student, self.d_teacher, self.rank, self.hidden = d_student, d_teacher, rank, hidden
        self.meta = nn.Linear(d_teacher, hidden)
        self.Uw = nn.Parameter(_uniform_(torch.empty(hidden, rank, d_teacher), hidden * rank))
        self.Ub = nn.Parameter(_uniform_(torch.empty(rank, d_teacher), hidden * rank))
        self.Vw = nn.Parameter(_uniform_(torch.empty(hidden, d_student, rank), hidden))
        self.Vb = nn.Parameter(_uniform_(torch.empty(d_student, rank), hidden))
        self.base = nn.Linear(d_student, d_teacher, bias=False) if base else None

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        """``W_e s_e`` for every row: s [N, d_s], t [N, d_t] -> [N, d_t]."""
        N = s.shape[0]
        h = torch.relu(self.meta(t))                                   # [N, H]
        hs = (h.unsqueeze(2) * s.unsqueeze(1)).reshape(N, -1)           # [N, H*d_s]
        c = hs @ self.Vw.reshape(-1, self.rank) + s @ self.Vb           # [N, r]  = V_e^T s
        hc = (h.unsqueeze(2) * c.unsqueeze(1)).reshape(N, -1)           # [N, H*r]
        out = hc @ self.Uw.reshape(-1, self.d_teacher) + c @ self.Ub    # [N, d_t] = U_e c
        if self.base is not None:
            out = out + self.base(s)
        return out

    def bridges(self, t: Tensor) -> Tensor:
        """Explicit ``W_e`` [N, d_t, d_s] (reference and analysis only; O(N d_t d_s))."""
        h = torch.relu(self.meta(t))
        U = torch.einsum("nk,krt->ntr", h, self.Uw) + self.Ub.t()
        V = torch.einsum("nk,ksr->nsr", h, self.Vw) + self.Vb
        W = torch.einsum("ntr,nsr->nts", U, V)
        if self.base is not None:
            W = W + self.base.weight
        return W


def annealed_temperature(epoch: int, start: float, end: float, epochs: int,
                         anneal: bool = True) -> float:
    """Gumbel temperature at ``epoch``: ``max(start * (end/start)^(epoch/epochs), end)``
    when ``anneal`` (DE / HTD: 1 -> 1e-10 over ``epochs`` = 1000 in the authors' code),
    else the constant ``start``."""
    if not anneal:
        return float(start)
    return float(max(start * (end / start) ** (epoch / epochs), end))
