"""The sparse-coding front end (seed 004 ch. 4.2; Bakiskan, Cekic & Madhow, arXiv 2011.10867).

An overcomplete dictionary of n×n×3 patches, learned without labels and frozen, encodes the
image; the code is made sparse (top-T), random (dropout at train *and* test time) and coarse
(a dead-zone sign quantiser whose threshold exceeds what an ε_d-bounded attack can move a
coefficient, so a perturbation cannot flip a surviving sign); a trained decoder maps the code
back to an image for an ordinary backbone:

======================  ====================================================================
stage                   what it does (shapes for CIFAR: n = 4, S = 2, L = 500, m = 15)
======================  ====================================================================
encoder                 x̄ = Dᵀx per patch: ``conv2d(x, dictionary, stride S)``, (N, L, m, m);
                        the dictionary is a frozen buffer (never a parameter)
top-T                   keep the T entries of largest |x̄| per location, with their sign
dropout                 zero each survivor with probability p, no rescaling (Eq 4.5)
quantiser               x̂_l = sgn(x̃_l)·‖d_l‖₁ if |x̃_l| ≥ β·ε_d·‖d_l‖₁ else 0 (Eq 4.6)
decoder                 ConvT(L→c1, n, S) → ReLU → ConvT(c1→c2, 3) → ReLU → ConvT(c2→3, 3)
                        → ReLU → centre crop to H×W → clamp(0, 1)
======================  ====================================================================

**Sizes.** The input's H×W are read at every call (no ``image_size`` option). The encoder
grid is m = ⌊(H − n)/S⌋ + 1 per side; the first transposed convolution is asked for exactly
H×W (``output_size``: PyTorch then adds ``output_padding = (H − n) mod S`` < S, the rows the
encoder's last patch did not reach), so for CIFAR 15 → 32, and for sizes where the patches
tile the image the result is the authors' unchanged; the two 3×3 layers add 2 each (32 → 34
→ 36) and the centre H×W is kept. Without the padding a size with (H − n) mod S > 4 (e.g.
S ≥ 6) would come out smaller than H.

**Dictionary** (:meth:`SparseCodingFrontEnd.fit_data`): ``dict_steps·dict_batch`` patches
are drawn at random from all the stride-S patches of the training images (raw [0, 1], no
centring, flattened HWC like the authors' ``_extract_patches`` code, here via ``unfold``),
and scikit-learn's ``MiniBatchDictionaryLearning`` sees each of them exactly once, in
``dict_steps`` mini-batches of ``dict_batch`` — what sklearn 0.22's ``n_iter=1000,
batch_size=5`` did, i.e. only 5,000 patches for CIFAR, not the "1000 iterations to
convergence" of the seed text [C8]. Modern sklearn has no ``n_iter``; ``fit`` with
``max_iter=1`` (one pass), ``shuffle=False`` (the draw is already random), ``tol=0`` and
``max_no_improvement=None`` (no early stopping) runs exactly ``dict_steps`` steps. One
difference remains: 0.22 initialised the atoms from the SVD of *all* patches, this from the
SVD of the drawn ones. Atoms are ``components_`` rows, renormalised to unit ℓ2 (sklearn only
projects onto ‖d‖₂ ≤ 1).

**Ensemble.** One forward is one random realisation. The ``ensemble`` attribute (E) tells the
model around the front end to average E realisations' softmax in eval mode and return
:func:`log_mean_softmax` as its logits (seed 004 §4.2; the authors' ``Ensemble_post_softmax``
returned probabilities, §7.12).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import CoeffDropout, Quantizer, TopT


def log_mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log((1/E)·Σ_e softmax(logits_e)) of ``(E, N, C)`` logits, ``(N, C)``: the logits of an
    E-member ensemble that averages probabilities, computed stably as
    logsumexp_e(log_softmax(logits_e)) − log E."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (E, N, C), got shape {tuple(logits.shape)}")
    e = logits.shape[0]
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - float(np.log(e))


def patch_grid(size: int, patch: int, stride: int) -> int:
    """m = ⌊(size − patch)/stride⌋ + 1, the patches per side; ValueError when none fits."""
    if size < patch:
        raise ValueError(f"the sparse-coding front end needs images of at least {patch} px "
                         f"per side (its patch size), got {size}")
    return (size - patch) // stride + 1


def extract_patches(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """All ``patch``×``patch`` patches at stride ``stride`` of ``images`` (N, C, H, W), as
    ``(N, m_h·m_w, patch·patch·C)``, locations row-major, each patch flattened in HWC order
    (row, column, channel: the layout of the authors' dictionary)."""
    n, c = images.shape[:2]
    cols = F.unfold(images, patch, stride=stride)  # (N, C·p·p, P): channel-major
    p = cols.shape[-1]
    return cols.view(n, c, patch, patch, p).permute(0, 4, 2, 3, 1).reshape(n, p, -1)


def atoms_to_weight(atoms: torch.Tensor, patch: int, channels: int = 3) -> torch.Tensor:
    """``(L, patch·patch·C)`` atoms flattened HWC -> a conv weight ``(L, C, patch, patch)``,
    so that the conv's output at a location is the atom's dot product with the patch there
    flattened like :func:`extract_patches`."""
    return atoms.reshape(-1, patch, patch, channels).permute(0, 3, 1, 2).contiguous()


def _dictionary_learner(**kwargs: Any) -> Any:
    """scikit-learn's ``MiniBatchDictionaryLearning(**kwargs)`` (imported when needed)."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    return MiniBatchDictionaryLearning(**kwargs)


class SparseCodingFrontEnd(nn.Module):
    """Images ``(N, 3, H, W)`` in [0, 1] -> images ``(N, 3, H, W)`` in [0, 1]: a frozen
    dictionary encoder (top-T, dropout, dead-zone sign quantiser) and a trained decoder.

    Args:
        atoms: L, the dictionary size (CIFAR 500, ≈10× the 48 values of a patch).
        patch: n, the patch side (4; Imagenette 8).
        stride: S, the patch stride (2; Imagenette 4).
        t: T, coefficients kept per location (50 stochastic; 15 non-random).
        dropout: p, the probability of zeroing a kept coefficient, at train and test time
            (0.95; 0: the non-random defence).
        beta, eps_d: the quantiser's dead zone |x̃_l| < β·ε_d·‖d_l‖₁ (3 and 8/255: 24/255).
        dict_alpha: λ of the dictionary's ℓ1 penalty (1.0; Imagenette 0.5).
        dict_steps, dict_batch: mini-batches and their size for the dictionary (1000 × 5).
        decoder: (c1, c2), the channels of the decoder's first two layers (300, 100).
        seed: the seed of the dropout's own generator (:meth:`CoeffDropout.reseed`).
        steepness: s of the smooth BPDA backward through the quantiser (4).
        u_factor: U/T of the top-U BPDA backward through top-T (2).
        ensemble: E, realisations the model around the front end averages in eval mode.
    """

    #: the output is an image: the backbone behind keeps its own mean/std normalisation
    normalized_output = False
    out_channels = 3

    def __init__(self, *, atoms: int = 500, patch: int = 4, stride: int = 2, t: int = 50,
                 dropout: float = 0.95, beta: float = 3.0, eps_d: float = 8 / 255,
                 dict_alpha: float = 1.0, dict_steps: int = 1000, dict_batch: int = 5,
                 decoder: Sequence[int] = (300, 100), seed: int = 0, steepness: float = 4.0,
                 u_factor: float = 2.0, ensemble: int = 1) -> None:
        super().__init__()
        if atoms < 1 or patch < 1 or stride < 1:
            raise ValueError(f"atoms, patch and stride must be >= 1, got {atoms}, {patch}, "
                             f"{stride}")
        if not 1 <= t <= atoms:
            raise ValueError(f"t (coefficients kept per location) must lie in [1, atoms="
                             f"{atoms}], got {t}")
        if beta <= 0 or eps_d <= 0:
            raise ValueError(f"beta and eps_d must be > 0, got {beta}, {eps_d}")
        if dict_alpha <= 0 or dict_steps < 1 or dict_batch < 1:
            raise ValueError(f"dict_alpha must be > 0 and dict_steps, dict_batch >= 1, got "
                             f"{dict_alpha}, {dict_steps}, {dict_batch}")
        if len(decoder) != 2 or any(int(c) < 1 for c in decoder):
            raise ValueError(f"decoder must be two channel counts >= 1, got {list(decoder)}")
        if ensemble < 1:
            raise ValueError(f"ensemble (E) must be >= 1, got {ensemble}")
        self.atoms, self.patch, self.stride = int(atoms), int(patch), int(stride)
        self.beta, self.eps_d = float(beta), float(eps_d)
        self.dict_alpha = float(dict_alpha)
        self.dict_steps, self.dict_batch = int(dict_steps), int(dict_batch)
        self.decoder_channels = tuple(int(c) for c in decoder)
        self.seed = int(seed)
        self.ensemble = int(ensemble)
        # frozen and saved: learned once by fit_data, never by the optimiser
        self.register_buffer("dictionary", torch.zeros(atoms, 3, patch, patch))
        self.register_buffer("fitted", torch.tensor(False))
        self.top = TopT(t, u_factor=u_factor)
        self.dropout = CoeffDropout(dropout, seed=seed)
        c = self.threshold
        self.quantizer = Quantizer((-c, c), steepness=steepness)
        c1, c2 = self.decoder_channels
        self.decoder = nn.ModuleList([
            nn.ConvTranspose2d(atoms, c1, patch, stride=stride),
            nn.ConvTranspose2d(c1, c2, 3),
            nn.ConvTranspose2d(c2, 3, 3),
        ])
        # forward checks `fitted` (a device read) once, then again after a state-dict load
        self._checked = False
        self.register_load_state_dict_post_hook(SparseCodingFrontEnd._recheck)

    @staticmethod
    def _recheck(module: nn.Module, incompatible_keys: Any) -> None:
        module._checked = False

    @property
    def threshold(self) -> float:
        """β·ε_d, the dead zone in units of x̃/‖d‖₁."""
        return self.beta * self.eps_d

    @property
    def t(self) -> int:
        return self.top.t

    @property
    def p(self) -> float:
        return self.dropout.p

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit_data` has set the dictionary (saved with the state dict)."""
        return bool(self.fitted)

    def atom_l1(self) -> torch.Tensor:
        """‖d_l‖₁ of every atom, ``(L,)``."""
        return self.dictionary.abs().sum(dim=(1, 2, 3))

    # -- the forward ------------------------------------------------------------------------
    def _check_ready(self, x: torch.Tensor) -> None:
        if not self._checked:
            if not self.is_fitted:
                raise RuntimeError(
                    "the sparse-coding front end has no dictionary yet: call "
                    "fit_data(images, seed) on training images (or load a fitted state dict) "
                    "before the forward")
            self._checked = True
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got shape {tuple(x.shape)}")
        patch_grid(x.shape[2], self.patch, self.stride)
        patch_grid(x.shape[3], self.patch, self.stride)

    def encode(self, x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """The code ``(N, L, m_h, m_w)`` of images ``x``: entries in {0, ±‖d_l‖₁}, or with
        ``quantize=False`` the signed coefficients x̃ after top-T and dropout (one dropout
        draw per call either way)."""
        self._check_ready(x)
        xbar = F.conv2d(x, self.dictionary.to(x.dtype), stride=self.stride)
        xt = self.dropout(self.top(xbar))
        if not quantize:
            return xt
        l1 = self.atom_l1().to(x.dtype).view(1, -1, 1, 1)
        return self.quantizer(xt / l1.clamp_min(1e-12)) * l1

    def decode(self, code: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Images ``(N, 3, *size)`` in [0, 1] from a code: the first transposed conv restores
        ``size`` exactly (output padding (H − n) mod S), the 3×3 ones add 4, the centre is
        kept."""
        h, w = size
        first, second, third = self.decoder
        y = F.relu(first(code, output_size=[h, w]))
        y = F.relu(second(y))
        y = F.relu(third(y))
        top, left = (y.shape[2] - h) // 2, (y.shape[3] - w) // 2
        return y[:, :, top:top + h, left:left + w].clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), (x.shape[2], x.shape[3]))

    # -- the trainer's hook (see retrieval_bio.models.frontends) ----------------------------
    @torch.no_grad()
    def fit_data(self, images: torch.Tensor, seed: int = 0) -> None:
        """Learn the dictionary from training images ``(N, 3, H, W)`` in [0, 1]: draw
        ``dict_steps·dict_batch`` patches at random (numpy ``default_rng(seed)``, without
        replacement; all of them in random order, repeatedly, when there are fewer) and show
        each once to ``MiniBatchDictionaryLearning`` in ``dict_steps`` mini-batches (see the
        module's docstring, [C8]). Sets ``dictionary`` and ``fitted``."""
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
            raise ValueError(f"fit_data expects images (N, 3, H, W), got shape "
                             f"{tuple(images.shape)}")
        n, s = self.patch, self.stride
        m_h, m_w = (patch_grid(v, n, s) for v in images.shape[2:])
        per_image = m_h * m_w
        total = images.shape[0] * per_image
        want = self.dict_steps * self.dict_batch
        rng = np.random.default_rng(seed)
        draws = [rng.permutation(total) for _ in range(want // total)]
        draws.append(rng.choice(total, size=want % total, replace=False))
        idx = np.concatenate(draws)
        img, loc = idx // per_image, idx % per_image
        # unfold only the images drawn from, a chunk at a time
        uniq, inverse = np.unique(img, return_inverse=True)
        x = np.empty((want, 3 * n * n), dtype=np.float64)
        chunk = 1024
        for start in range(0, len(uniq), chunk):
            ids = torch.as_tensor(uniq[start:start + chunk], device=images.device)
            patches = extract_patches(images[ids].detach().to("cpu", torch.float64), n, s)
            sel = (inverse >= start) & (inverse < start + chunk)
            x[sel] = patches[torch.as_tensor(inverse[sel] - start),
                             torch.as_tensor(loc[sel])].numpy()
        learner = _dictionary_learner(
            n_components=self.atoms, alpha=self.dict_alpha, batch_size=self.dict_batch,
            max_iter=1, shuffle=False, tol=0.0, max_no_improvement=None, random_state=seed)
        learner.fit(x)
        atoms = torch.as_tensor(np.asarray(learner.components_), dtype=torch.float64)
        atoms = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.dictionary.copy_(atoms_to_weight(atoms, n).to(self.dictionary))
        self.fitted.fill_(True)
        self._checked = False

    def extra_repr(self) -> str:
        return (f"atoms={self.atoms}, patch={self.patch}, stride={self.stride}, t={self.t}, "
                f"dropout={self.p:g}, threshold={self.beta:g}*{self.eps_d:.4g}"
                f"={self.threshold:.4g}, decoder={self.decoder_channels}, "
                f"dictionary=(alpha={self.dict_alpha:g}, {self.dict_steps}x{self.dict_batch}), "
                f"ensemble={self.ensemble}, fitted={self.is_fitted}")
