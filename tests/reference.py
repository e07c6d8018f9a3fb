"""A plain reference implementation of CRATE, CRATE-MAE and CRATE-alpha, written from the equations.

Deliberately naive: explicit softmax attention, the three-product ISTA step, MAE's
shuffle / unshuffle masking, and the official module layout, so its ``state_dict`` keys are the
official checkpoint keys. Tests compare the library against it with identical weights; the CPU
benchmark uses it as the baseline.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sincos_table(dim: int, grid: int) -> np.ndarray:
    """MAE's 2-D sin-cos table with a zero class-token row, float32 as the MAE code makes it."""
    coords = np.arange(grid, dtype=np.float32)
    col, row = np.meshgrid(coords, coords)  # col varies along a row

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float32) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one_d(dim // 2, col), one_d(dim // 2, row)], axis=1)
    return np.concatenate([np.zeros((1, dim)), table], axis=0).astype(np.float32)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class Attention(nn.Module):
    """MSSA: w = z U; softmax(w_k w_k^T / sqrt(p)) w_k per head; [.] W_out + b_out (CRATE-alpha: no b_out)."""

    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=bias))

    def attention(self, x):
        b, n, d = x.shape
        w = self.qkv(x).reshape(b, n, self.heads, d // self.heads).permute(0, 2, 1, 3)
        dots = torch.matmul(w, w.transpose(-1, -2)) / math.sqrt(d // self.heads)
        return w, torch.softmax(dots, dim=-1)

    def forward(self, x):
        b, n, d = x.shape
        w, attn = self.attention(x)
        out = torch.matmul(attn, w).permute(0, 2, 1, 3).reshape(b, n, d)
        return self.to_out(out)


class ISTAStep(nn.Module):
    """relu(z + eta * (z D - z D^T D) - eta * lambda), three matrix products."""

    def __init__(self, dim: int, eta: float = 0.1, lambd: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) / math.sqrt(dim))
        self.eta, self.lambd = eta, lambd

    def forward(self, z):
        d = self.weight
        return F.relu(z + self.eta * (z @ d - (z @ d.t()) @ d) - self.eta * self.lambd)


class LinearStep(nn.Module):
    """y = z E^T (the decoder's inverse of the ISTA step)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) / math.sqrt(dim))

    def forward(self, z):
        return z @ self.weight.t()


class EncoderBlock(nn.Module):
    """f^l: x = x + MSSA(LN1(x)); x = ISTA(LN2(x))."""

    def __init__(self, dim: int, heads: int, eta: float = 0.1, lambd: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.ModuleList([PreNorm(dim, Attention(dim, heads)), PreNorm(dim, ISTAStep(dim, eta, lambd))])]
        )

    def forward(self, x):
        attn, ista = self.layers[0]
        return ista(attn(x) + x)


class DecoderBlock(nn.Module):
    """g^l: y = LN1(x) E^T; x = y - MSSA(LN2(y))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.ModuleList([PreNorm(dim, LinearStep(dim)), PreNorm(dim, Attention(dim, heads))])]
        )

    def forward(self, x):
        linear, attn = self.layers[0]
        y = linear(x)
        return y - attn(y)


class OvercompleteISTAStep(nn.Module):
    """CRATE-alpha's ODL step, column form as in the paper, with the LASSO gradient expanded.

    z1 = relu(eta D^T x - eta lambda);  z2 = relu(z1 + eta (D^T x - D^T D z1) - eta lambda);  out = D1 z2.
    Row vectors here; D^T D is formed explicitly (a different product order from the library's).
    """

    def __init__(self, dim: int, ratio: int = 4, eta: float = 0.1, lambd: float = 0.1) -> None:
        super().__init__()
        self.D = nn.Parameter(torch.randn(dim, ratio * dim) / math.sqrt(dim))
        self.D1 = nn.Parameter(torch.randn(dim, ratio * dim) / math.sqrt(dim))
        self.eta, self.lambd = eta, lambd

    def codes(self, x):
        dtx = x @ self.D  # D^T x, as rows
        z1 = F.relu(self.eta * dtx - self.eta * self.lambd)
        z2 = F.relu(z1 + self.eta * (dtx - z1 @ (self.D.t() @ self.D)) - self.eta * self.lambd)
        return z1, z2

    def forward(self, x):
        return self.codes(x)[1] @ self.D1.t()


class RefCrateAlpha(nn.Module):
    """CRATE-alpha in the official layout (``conv1``, ``pos_embedding``, ``transformer.layers``, ``mlp_head``)."""

    def __init__(self, img_size=32, patch=8, in_chans=3, dim=64, depth=2, heads=4, num_classes=10):
        super().__init__()
        grid = img_size // patch
        self.conv1 = nn.Conv2d(in_chans, dim, patch, patch, bias=True)
        self.pos_embedding = nn.Parameter(torch.randn(1, grid * grid + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PreNorm(dim, Attention(dim, heads, bias=False), eps=1e-6),
                        PreNorm(dim, OvercompleteISTAStep(dim), eps=1e-6),
                    ]
                )
                for _ in range(depth)
            ]
        )
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))  # eps 1e-5

    def forward(self, img):
        x = self.conv1(img)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        for attn, ff in self.transformer.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.mlp_head(x[:, 0])


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RefCrateMAE(nn.Module):
    """CRATE-MAE in the official layout (including the unused ``pos_embed`` and ``decoder_embed``)."""

    def __init__(
        self,
        img_size=32,
        patch=8,
        in_chans=3,
        dim=64,
        depth=2,
        heads=4,
        decoder_depth=None,
        eta=0.1,
        lambd=0.5,
        norm_pix_loss=False,
    ):
        super().__init__()
        grid = img_size // patch
        self.patch, self.in_chans, self.norm_pix_loss = patch, in_chans, norm_pix_loss
        self.patch_embed = PatchEmbed(patch, in_chans, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim), requires_grad=False)  # unused
        self.blocks = nn.ModuleList([EncoderBlock(dim, heads, eta, lambd) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dim)  # unused
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        table = torch.from_numpy(sincos_table(dim, grid))[None]
        self.decoder_pos_embed = nn.Parameter(table, requires_grad=False)
        self.decoder_blocks = nn.ModuleList([DecoderBlock(dim, heads) for _ in range(decoder_depth or depth)])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, patch * patch * in_chans)

    def patchify(self, imgs):
        b, c, h, w = imgs.shape
        p = self.patch
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, imgs, mask_ratio=0.75, noise=None):
        x = self.patch_embed(imgs)
        n, length, d = x.shape
        len_keep = int(length * (1 - mask_ratio))
        noise = torch.rand(n, length) if noise is None else noise
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :len_keep, None].repeat(1, 1, d))
        mask = torch.ones(n, length)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x_ = torch.cat([kept, self.mask_token.repeat(n, length - len_keep, 1)], dim=1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].repeat(1, 1, d))
        x = torch.cat([self.cls_token.expand(n, -1, -1), x_], dim=1) + self.decoder_pos_embed
        for blk in self.blocks:
            x = blk(x)
        latent = self.norm(x)
        x = latent
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        loss = (loss * mask).sum() / mask.sum()
        return loss, pred, mask


class RefCRATE(nn.Module):
    """Supervised CRATE in the official layout (``to_patch_embedding``, ``transformer``, ``mlp_head``)."""

    def __init__(self, img_size=32, patch=8, in_chans=3, dim=64, depth=2, heads=4, num_classes=10, eta=0.1, lambd=0.1):
        super().__init__()
        self.patch = patch
        grid = img_size // patch
        patch_dim = in_chans * patch * patch
        self.to_patch_embedding = nn.Sequential(
            nn.Identity(), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim)
        )
        self.pos_embedding = nn.Parameter(torch.randn(1, grid * grid + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            [
                nn.ModuleList([PreNorm(dim, Attention(dim, heads)), PreNorm(dim, ISTAStep(dim, eta, lambd))])
                for _ in range(depth)
            ]
        )
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img):
        b, c, h, w = img.shape
        p = self.patch
        x = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        x = self.to_patch_embedding(x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embedding
        for attn, ff in self.transformer.layers:
            x = ff(attn(x) + x)
        return self.mlp_head(x[:, 0])


def _block_to_official(ours: dict, prefix: str, official: str, decoder: bool) -> dict:
    out = {}
    attn_idx, step_idx = (1, 0) if decoder else (0, 1)
    out[f"{official}.layers.0.{attn_idx}.norm.weight"] = ours[f"{prefix}.norm{attn_idx + 1}.weight"]
    out[f"{official}.layers.0.{attn_idx}.norm.bias"] = ours[f"{prefix}.norm{attn_idx + 1}.bias"]
    out[f"{official}.layers.0.{attn_idx}.fn.qkv.weight"] = ours[f"{prefix}.attn.qkv.weight"]
    out[f"{official}.layers.0.{attn_idx}.fn.to_out.0.weight"] = ours[f"{prefix}.attn.proj.weight"]
    out[f"{official}.layers.0.{attn_idx}.fn.to_out.0.bias"] = ours[f"{prefix}.attn.proj.bias"]
    out[f"{official}.layers.0.{step_idx}.norm.weight"] = ours[f"{prefix}.norm{step_idx + 1}.weight"]
    out[f"{official}.layers.0.{step_idx}.norm.bias"] = ours[f"{prefix}.norm{step_idx + 1}.bias"]
    out[f"{official}.layers.0.{step_idx}.fn.weight"] = ours[
        f"{prefix}.linear.weight" if decoder else f"{prefix}.ista.weight"
    ]
    return out


def crate_mae_to_official(model: nn.Module, ref: RefCrateMAE) -> dict:
    """Our CrateMAE weights under the official key names (unused official tensors from ``ref``)."""
    sd = model.state_dict()
    out = dict(ref.state_dict())
    out["patch_embed.proj.weight"] = sd["encoder.patch_embed.proj.weight"]
    out["patch_embed.proj.bias"] = sd["encoder.patch_embed.proj.bias"]
    out["cls_token"] = sd["encoder.cls_token"]
    out["mask_token"] = sd["mask_token"]
    for i in range(len(model.encoder.blocks)):
        out.update(_block_to_official(sd, f"encoder.blocks.{i}", f"blocks.{i}", decoder=False))
    for i in range(len(model.decoder_blocks)):
        out.update(_block_to_official(sd, f"decoder_blocks.{i}", f"decoder_blocks.{i}", decoder=True))
    for name in ("norm.weight", "norm.bias"):
        out[name] = sd[f"encoder.{name}"]
    for name in ("decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"):
        out[name] = sd[name]
    return out


def crate_to_official(model: nn.Module) -> dict:
    """Our supervised CRATE weights under the official key names."""
    sd = model.state_dict()
    out = {
        "to_patch_embedding.1.weight": sd["patch_embed.norm_in.weight"],
        "to_patch_embedding.1.bias": sd["patch_embed.norm_in.bias"],
        "to_patch_embedding.2.weight": sd["patch_embed.proj.weight"],
        "to_patch_embedding.2.bias": sd["patch_embed.proj.bias"],
        "to_patch_embedding.3.weight": sd["patch_embed.norm_out.weight"],
        "to_patch_embedding.3.bias": sd["patch_embed.norm_out.bias"],
        "pos_embedding": sd["pos_embed"],
        "cls_token": sd["cls_token"],
        "mlp_head.0.weight": sd["fc_norm.weight"],
        "mlp_head.0.bias": sd["fc_norm.bias"],
        "mlp_head.1.weight": sd["head.weight"],
        "mlp_head.1.bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        block = _block_to_official(sd, f"blocks.{i}", f"transformer.layers.{i}", decoder=False)
        out.update(
            {k.replace(f"transformer.layers.{i}.layers.0.", f"transformer.layers.{i}."): v for k, v in block.items()}
        )
    return out


def crate_alpha_to_official(model: nn.Module, tensors: dict | None = None) -> dict:
    """Our CRATE-alpha weights (or other per-parameter ``tensors``, e.g. gradients) under the official key names."""
    sd = model.state_dict() if tensors is None else tensors
    out = {
        "pos_embedding": sd["pos_embed"],
        "cls_token": sd["cls_token"],
        "conv1.weight": sd["patch_embed.proj.weight"],
        "conv1.bias": sd["patch_embed.proj.bias"],
        "mlp_head.0.weight": sd["fc_norm.weight"],
        "mlp_head.0.bias": sd["fc_norm.bias"],
        "mlp_head.1.weight": sd["head.weight"],
        "mlp_head.1.bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        b, o = f"blocks.{i}", f"transformer.layers.{i}"
        out.update(
            {
                f"{o}.0.norm.weight": sd[f"{b}.norm1.weight"],
                f"{o}.0.norm.bias": sd[f"{b}.norm1.bias"],
                f"{o}.0.fn.qkv.weight": sd[f"{b}.attn.qkv.weight"],
                f"{o}.0.fn.to_out.0.weight": sd[f"{b}.attn.proj.weight"],
                f"{o}.1.norm.weight": sd[f"{b}.norm2.weight"],
                f"{o}.1.norm.bias": sd[f"{b}.norm2.bias"],
                f"{o}.1.fn.D": sd[f"{b}.ista.D"],
                f"{o}.1.fn.D1": sd[f"{b}.ista.D1"],
            }
        )
    return out


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and buffer non-trivial values (LayerNorm affine included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model
