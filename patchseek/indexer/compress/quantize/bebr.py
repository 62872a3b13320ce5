"""``BEBRQuantizer``: recurrent binarization (Binary Embedding-based Retrieval, Tencent) of patch vectors.

Model (``u`` = rounds, ``c`` = code dimension, ``W`` (c, dim) with orthonormal rows)::

    b_0     = sign(W x)                                        # 1 bit per code dimension
    r_i     = x - B_i(b_i),      B_i(b) = alpha_i · W.T b      # residual in embedding space
    b_{i+1} = b_i + 2^-(i+1) · sign(R_i(r_i)),  R_i(r) = W r + MLP_i(r)   # i = 0 .. u-1
    x_hat   = B_u(b_u)

so every code dimension takes one of ``2^(u+1)`` levels ``Σ_i ±2^-i`` (``u + 1`` bits). ``W``, the
scales ``alpha_i`` and the residual MLPs (Linear-GELU-Linear, last layer zero-initialised so training
starts from greedy residual quantization) are trained with torch on the CPU on the collection's own
vectors by the reconstruction loss ``‖x - x_hat‖²`` with straight-through signs; ``W`` is kept
orthonormal by a QR parametrisation, initialised from the sample's top principal directions times a
seeded random rotation (ITQ-style variance balancing).

The level indices are packed ``u + 1`` bits per dimension, high bits first, so each byte holds a
fixed group of ``8 / (u + 1)`` code dimensions (each 4-bit nibble ``4 / (u + 1)`` of them). Two
scorings, both exact functions of the codes:

- ``"asymmetric"`` (default, ADC): the float query against the decoded document,
  ``q · x_hat_d = alpha_u · (W q) · b_d``, as a per-query table over byte values
  ``lut[i, s, v] = alpha_u Σ_{t in byte s} (W q_i)_t · level(v_t)`` (n_q, bytes, 256) summed by
  ``code_maxsim`` — no quantization error on the query side, the better ranking;
- ``"sdc"`` (symmetric, as in the BEBR paper): the query is encoded the same way and, because the
  decoder is ``alpha_u · W.T b`` with orthonormal ``W``, ``x_hat_q · x_hat_d = alpha_u² · b_q · b_d``
  ``= Σ_bytes T[q_hi, d_hi] + T[q_lo, d_lo]`` with the 16 × 16 table
  ``T[a, b] = alpha_u² Σ_{t in group} level(a_t) · level(b_t)`` (``sdc_maxsim``) — tiny tables and
  integer codes on both sides, at the price of the query's own quantization error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.base import Backend, Quantizer
from patchseek.indexer.compress.quantize._common import pack_uint, unpack_uint
from patchseek.kernels import code_maxsim, sdc_maxsim

ENCODE_CHUNK = 65536
SCORINGS = ("asymmetric", "sdc")
# one residual MLP: w1 (h, dim), b1 (h,), w2 (c, h), b2 (c,)
Mlp = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _as_mlp(params: Sequence[torch.Tensor]) -> Mlp:
    """The four tensors (w1, b1, w2, b2) of one residual MLP as an ``Mlp`` tuple."""
    w1, b1, w2, b2 = params
    return w1, b1, w2, b2


def _sign(z: torch.Tensor, ste: bool) -> torch.Tensor:
    """±1 (0 maps to +1); with ``ste`` the gradient passes straight through."""
    s = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)  # (n, c)
    return z + (s - z).detach() if ste else s


def _recurrent(
    x: torch.Tensor, proj: torch.Tensor, alphas: torch.Tensor, mlps: list[Mlp], *, ste: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the recurrent binarization.

    x (n, dim), proj = W (c, dim), alphas (u + 1,) -> (level index (n, c) int64, b (n, c), x_hat (n, dim))
    """
    y = x @ proj.T  # (n, c)
    b = _sign(y, ste)  # (n, c)
    index = (y >= 0).long()  # (n, c)
    for i, (w1, b1, w2, b2) in enumerate(mlps):
        r = x - alphas[i] * (b @ proj)  # (n, dim)
        z = r @ proj.T + F.linear(F.gelu(F.linear(r, w1, b1)), w2, b2)  # (n, c)
        b = b + 2.0 ** -(i + 1) * _sign(z, ste)  # (n, c)
        index = index * 2 + (z >= 0).long()  # (n, c)
    x_hat = alphas[len(mlps)] * (b @ proj)  # (n, dim)
    return index, b, x_hat


class BEBRQuantizer(Quantizer):
    """Recurrent binarization with ``rounds + 1`` bits per code dimension, scored by ADC or a nibble table.

    codes (n, c·(rounds+1)/8) uint8. See the module docstring for the model.

    Parameters
    ----------
    rounds : {0, 1, 3}
        Residual rounds ``u`` (1, 2 or 4 bits per code dimension).
    code_dim : int
        Code dimension ``c`` (0 = the embedding dimension); ``c ≤ dim``, ``c·(u+1) % 8 == 0``.
    scoring : {"asymmetric", "sdc"}
        Float query × decoded codes (ADC), or query codes × document codes (SDC nibble table).
    hidden : int
        Width of the residual MLPs.
    epochs : int
        Passes over the training sample.
    batch_size : int
        Training batch size.
    lr : float
        Adam learning rate.
    max_train : int
        Training vectors used at most (a seeded subsample of the fit sample).
    seed : int
        Seed of the initial rotation, the MLP initialisation and the batch order.
    """

    kind = "bebr"

    def __init__(
        self,
        rounds: int = 1,
        code_dim: int = 0,
        *,
        scoring: str = "asymmetric",
        hidden: int = 128,
        epochs: int = 6,
        batch_size: int = 2048,
        lr: float = 3e-3,
        max_train: int = 32_768,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if rounds not in (0, 1, 3):
            raise InvalidInputError(f"bebr rounds must be 0, 1 or 3, got {rounds!r}")
        if isinstance(code_dim, bool) or not isinstance(code_dim, int) or code_dim < 0:
            raise InvalidInputError(f"bebr code_dim must be an integer >= 0, got {code_dim!r}")
        if scoring not in SCORINGS:
            raise InvalidInputError(f"bebr scoring must be one of {list(SCORINGS)}, got {scoring!r}")
        self.rounds = rounds
        self.code_dim = code_dim
        self.scoring = scoring
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_train = max_train
        self.seed = seed
        self.W = torch.zeros(0, 0)  # (c, dim), orthonormal rows
        self.alphas = torch.zeros(rounds + 1)  # (u + 1,)
        self.mlps: list[Mlp] = []
        self.train_loss: float | None = None  # final mean reconstruction loss, for reports

    @property
    def bits(self) -> int:
        return self.rounds + 1

    @property
    def resolved_code_dim(self) -> int:
        return self.code_dim or self.fitted_dim

    @property
    def bytes_per_patch(self) -> int:
        return self.resolved_code_dim * self.bits // 8

    def _check_dim(self, dim: int) -> None:
        c = self.code_dim or dim
        if c > dim:
            raise InvalidInputError(f"bebr code_dim={c} exceeds the embedding dim {dim}")
        if (c * self.bits) % 8:
            raise InvalidInputError(f"bebr code_dim·bits must be a multiple of 8, got {c}·{self.bits}")

    # ---------------------------------------------------------------------------------- training
    def _fit_impl(self, x: np.ndarray) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        data = torch.from_numpy(x)  # (n, dim)
        if data.shape[0] > self.max_train:
            data = data[torch.randperm(data.shape[0], generator=gen)[: self.max_train]]  # (n', dim)
        n, dim = data.shape
        c = self.code_dim or dim
        # W init: top-c uncentred principal directions, then a random rotation inside that span.
        _, _, vh = torch.linalg.svd(data.double(), full_matrices=False)  # vh (min(n, dim), dim)
        basis = (
            vh[:c].T
            if vh.shape[0] >= c
            else torch.linalg.qr(torch.randn(dim, c, generator=gen, dtype=torch.float64)).Q
        )  # (dim, c)
        rot = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64)).Q  # (c, c)
        A = torch.nn.Parameter((basis @ rot).float())  # (dim, c); W = qr(A).Q.T
        mlp_params: list[list[torch.nn.Parameter]] = []
        for _ in range(self.rounds):
            w1 = torch.randn(self.hidden, dim, generator=gen) / math.sqrt(dim)  # (h, dim)
            mlp_params.append(
                [
                    torch.nn.Parameter(w1),
                    torch.nn.Parameter(torch.zeros(self.hidden)),
                    torch.nn.Parameter(torch.zeros(c, self.hidden)),
                    torch.nn.Parameter(torch.zeros(c)),
                ]
            )
        alphas = torch.nn.Parameter(self._init_alphas(data, A.detach(), mlp_params))  # (u + 1,)
        params = [A, alphas, *(p for mlp in mlp_params for p in mlp)]
        opt = torch.optim.Adam(params, lr=self.lr)
        steps = max(1, self.epochs * math.ceil(n / self.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        last = float("nan")
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, self.batch_size):
                batch = data[order[start : start + self.batch_size]]  # (B, dim)
                W = torch.linalg.qr(A).Q.T  # (c, dim)
                mlps = [_as_mlp(p) for p in mlp_params]
                _, _, x_hat = _recurrent(batch, W, alphas, mlps, ste=True)  # (B, dim)
                loss = (x_hat - batch).pow(2).sum(dim=1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                last = float(loss.detach())
        with torch.no_grad():
            self.W = torch.linalg.qr(A).Q.T.contiguous().clone()  # (c, dim)
            self.alphas = alphas.detach().clone()
            self.mlps = [_as_mlp([p.detach().clone() for p in mlp]) for mlp in mlp_params]
        self.train_loss = last

    def _init_alphas(
        self, data: torch.Tensor, raw: torch.Tensor, mlp_params: Sequence[Sequence[torch.Tensor]]
    ) -> torch.Tensor:
        """Least-squares decoder scale of each round, computed greedily round by round."""
        with torch.no_grad():
            W = torch.linalg.qr(raw).Q.T  # (c, dim)
            alphas = torch.zeros(self.rounds + 1)
            for i in range(self.rounds + 1):
                mlps = [_as_mlp([p.detach() for p in mlp]) for mlp in mlp_params[:i]]
                _, b, _ = _recurrent(data, W, torch.cat([alphas[:i], torch.ones(1)]), mlps, ste=False)
                y = data @ W.T  # (n, c)
                alphas[i] = (y * b).sum() / b.pow(2).sum().clamp_min(1e-12)
        return alphas

    # ------------------------------------------------------------------------------ encode/decode
    def _levels(self) -> torch.Tensor:
        """Value of each level index: (2^(u+1),) float32, ``(2l - (2^(u+1) - 1)) / 2^u``."""
        n_levels = 1 << self.bits
        return (2.0 * torch.arange(n_levels) - (n_levels - 1)) / (1 << self.rounds)

    def _encode_impl(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.bytes_per_patch), dtype=np.uint8)
        with torch.no_grad():
            for start in range(0, x.shape[0], ENCODE_CHUNK):
                block = torch.from_numpy(x[start : start + ENCODE_CHUNK])  # (b, dim)
                index, _, _ = _recurrent(block, self.W, self.alphas, self.mlps, ste=False)  # (b, c)
                out[start : start + ENCODE_CHUNK] = pack_uint(index.to(torch.uint8).numpy(), self.bits)
        return out

    def _decode_impl(self, codes: np.ndarray) -> np.ndarray:
        if codes.ndim != 2 or codes.shape[1] != self.bytes_per_patch or codes.dtype != np.uint8:
            raise InvalidInputError(f"bebr codes must be (n, {self.bytes_per_patch}) uint8")
        index = unpack_uint(codes, self.bits, self.resolved_code_dim)  # (n, c)
        b = self._levels()[torch.from_numpy(index.astype(np.int64))]  # (n, c)
        return (self.alphas[self.rounds] * (b @ self.W)).numpy()  # (n, dim)

    def table(self) -> torch.Tensor:
        """The 16 × 16 nibble table ``T[a, b] = alpha_u² Σ_t level(a_t) level(b_t)`` (float32)."""
        group = 4 // self.bits
        mask = (1 << self.bits) - 1
        nib = torch.arange(16)
        shifts = self.bits * (group - 1 - torch.arange(group))  # (group,)
        vals = self._levels()[(nib[:, None] >> shifts[None, :]) & mask]  # (16, group)
        return (self.alphas[self.rounds] ** 2 * vals @ vals.T).float().contiguous()  # (16, 16)

    def byte_levels(self) -> torch.Tensor:
        """Level value of each code dimension held by each byte value: (256, 8 / (u + 1)) float32."""
        per = 8 // self.bits
        shifts = self.bits * (per - 1 - torch.arange(per))  # (per,), high bits first as in pack_uint
        digits = (torch.arange(256)[:, None] >> shifts[None, :]) & ((1 << self.bits) - 1)  # (256, per)
        return self._levels()[digits]  # (256, per)

    def lut(self, q: torch.Tensor) -> torch.Tensor:
        """ADC table of a float query: q (n_q, dim) -> (n_q, bytes, 256) float32, ``q · x_hat`` summed.

        ``pair(i, j) = Σ_s lut[i, s, codes[j, s]] = q_i · decode(codes[j])``.
        """
        y = q.float() @ self.W.T  # (n_q, c): the query in code coordinates
        per = 8 // self.bits
        grouped = y.reshape(q.shape[0], -1, per)  # (n_q, bytes, per)
        return (self.alphas[self.rounds] * torch.einsum("qsp,vp->qsv", grouped, self.byte_levels())).float()

    # ------------------------------------------------------------------------------------ score
    def _prepare_impl(self, q: torch.Tensor) -> Any:
        if self.scoring == "asymmetric":
            return self.lut(q).contiguous()  # (n_q, bytes, 256)
        return torch.from_numpy(self._encode_impl(q.numpy()))  # (n_q, bytes) uint8, same code as docs

    def _score_impl(
        self, prepared: Any, codes: torch.Tensor, offsets: torch.Tensor, backend: Backend
    ) -> torch.Tensor:
        if self.scoring == "asymmetric":
            return code_maxsim(prepared.to(codes.device), codes, offsets, backend=backend)  # (n_docs,)
        table = self.table().to(codes.device)  # (16, 16)
        return sdc_maxsim(prepared.to(codes.device), codes, offsets, table, backend=backend)  # (n_docs,)

    # -------------------------------------------------------------------------------- persist
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {
            "rounds": self.rounds,
            "code_dim": self.code_dim,
            "scoring": self.scoring,
            "hidden": self.hidden,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "max_train": self.max_train,
            "seed": self.seed,
            "train_loss": self.train_loss,
        }
        arrays = {"W": self.W.numpy(), "alphas": self.alphas.numpy()}
        for i, mlp in enumerate(self.mlps):
            for name, tensor in zip(("w1", "b1", "w2", "b2"), mlp, strict=True):
                arrays[f"mlp{i}_{name}"] = tensor.numpy()
        return params, arrays

    @classmethod
    def _from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> BEBRQuantizer:
        obj = cls(
            int(params["rounds"]),
            int(params["code_dim"]),
            scoring=str(params.get("scoring", "sdc")),  # indexes written before ADC scored with SDC
            hidden=int(params["hidden"]),
            epochs=int(params["epochs"]),
            batch_size=int(params["batch_size"]),
            lr=float(params["lr"]),
            max_train=int(params["max_train"]),
            seed=int(params["seed"]),
        )
        obj.train_loss = params.get("train_loss")
        obj.W = torch.from_numpy(arrays["W"].astype(np.float32))
        obj.alphas = torch.from_numpy(arrays["alphas"].astype(np.float32))
        names = ("w1", "b1", "w2", "b2")
        obj.mlps = [
            _as_mlp([torch.from_numpy(arrays[f"mlp{i}_{n}"].astype(np.float32)) for n in names])
            for i in range(obj.rounds)
        ]
        return obj
