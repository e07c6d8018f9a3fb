"""Plain references of ToST (``tost_vision/tost.py``, ``tost_lang/model_TSSA.py``) and CBT
(``CBSA_image_classification/models.py``, ``attn_layers.py``), written step by step as the authors compute,
in the authors' module layout, so that their ``state_dict`` keys are the official checkpoint keys.

Deliberately naive and independent of the library: the Fourier positions from a cumulative sum over a
mask, the class-attention block's in-place style (a copy of the tokens, then a concatenation), the
representatives pooled with ``nn.AdaptiveAvgPool2d`` on ``w[:, :-1]``, ISTA with three products.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- shared: stem and ISTA
def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout))


class RefConvStem(nn.Module):
    def __init__(self, patch: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        if patch == 16:
            chans = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        else:
            chans = [in_chans, dim // 4, dim // 2, dim]
        mods: list[nn.Module] = []
        for i in range(len(chans) - 1):
            mods.append(conv_bn(chans[i], chans[i + 1]))
            if i < len(chans) - 2:
                mods.append(nn.GELU())
        self.proj = nn.Sequential(*mods)

    def forward(self, img):
        x = self.proj(img)
        hp, wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (hp, wp)


class RefMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


# ----------------------------------------------------------------------------- ToST
class RefFourier(nn.Module):
    def __init__(self, dim: int, hidden: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(hidden * 2, dim, 1)
        self.hidden, self.temperature = hidden, temperature

    def forward(self, b, h, w):
        not_mask = torch.ones(b, h, w, dtype=torch.bool)
        y = not_mask.cumsum(1, dtype=torch.float32)
        x = not_mask.cumsum(2, dtype=torch.float32)
        y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
        x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
        t = torch.arange(self.hidden, dtype=torch.float32)
        t = self.temperature ** (2 * (t // 2) / self.hidden)
        px, py = x[..., None] / t, y[..., None] / t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return self.token_projection(torch.cat((py, px), dim=3).permute(0, 3, 1, 2))


class RefTSSA(nn.Module):
    """The authors' ``AttentionTSSA``: keys ``qkv``, ``temp``, ``to_out.0``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim, bias=qkv_bias)
        self.temp = nn.Parameter(torch.ones(heads, 1))
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def membership(self, x):
        b, n, d = x.shape
        w = self.qkv(x).reshape(b, n, self.heads, d // self.heads).permute(0, 2, 1, 3)
        norms = w.pow(2).sum(dim=2, keepdim=True).sqrt().clamp_min(1e-12)  # over the tokens
        return w, torch.softmax((w / norms).pow(2).sum(-1) * self.temp, dim=1)

    def forward(self, x):
        b, n, d = x.shape
        w, pi = self.membership(x)
        dots = torch.matmul((pi / (pi.sum(-1, keepdim=True) + 1e-8)).unsqueeze(-2), w**2)
        out = -(w * pi.unsqueeze(-1)) * (1.0 / (1 + dots))
        return self.to_out(out.permute(0, 2, 1, 3).reshape(b, n, d))


class RefCausalTSSA(nn.Module):
    """The authors' ``CausalSelfAttention_TSSA``: keys ``c_attn``, ``c_proj``, ``temp``, ``denom_bias``."""

    def __init__(self, dim: int, heads: int, block_size: int, bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.temp = nn.Parameter(torch.ones(heads, 1))
        self.denom_bias = nn.Parameter(torch.zeros(heads, block_size, 1))

    def forward(self, x):
        b, t, c = x.shape
        w = self.c_attn(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)
        w_sq = w**2
        w_normed = w_sq / torch.cumsum(w_sq, dim=-2).clamp_min(1e-12) + self.denom_bias[:, :t, :]
        pi = F.softmax(torch.sum(w_normed, dim=-1) * self.temp, dim=1)
        dots = torch.cumsum(w_sq * pi.unsqueeze(-1), dim=-2) / (pi.cumsum(dim=-1) + 1e-8).unsqueeze(-1)
        y = -(w * pi.unsqueeze(-1)) * (1.0 / (1 + dots))
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class RefBaselineTSSA(RefTSSA):
    """``TSSA`` of ``CBSA_image_classification/attn_layers.py`` (the white-box ToST baseline): no qkv bias,
    ``to_out`` a plain Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads, qkv_bias=False)
        self.to_out = nn.Linear(dim, dim)


class RefToSTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, eta: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefTSSA(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, 4 * dim)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x):
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


class RefClassAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q[:, :, 0:1] * k).sum(dim=-1) / math.sqrt(c // self.heads)
        cls = (logits.softmax(dim=-1).unsqueeze(2) @ v).transpose(1, 2).reshape(b, 1, c)
        return torch.cat([self.proj(cls), x[:, 1:]], dim=1)


class RefClassAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, eta: float, tokens_norm: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefClassAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, 4 * dim)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.tokens_norm = tokens_norm

    def forward(self, x):
        x = x + self.gamma1 * self.attn(self.norm1(x))
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = x.clone()
            x[:, 0:1] = self.norm2(x[:, 0:1])
        residual = x
        cls = self.gamma2 * self.mlp(x[:, 0:1])
        return residual + torch.cat([cls, x[:, 1:]], dim=1)


class RefToST(nn.Module):
    """``VisionTransformer`` of ``tost_vision/tost.py`` in its layout (SyncBatchNorm as BatchNorm2d: same keys)."""

    def __init__(self, patch=16, dim=64, depth=2, heads=4, num_classes=10, eta=1.0, in_chans=3, cls_layers=2):
        super().__init__()
        self.patch_embed = RefConvStem(patch, dim, in_chans)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([RefToSTBlock(dim, heads, eta) for _ in range(depth)])
        self.cls_attn_blocks = nn.ModuleList([RefClassAttentionBlock(dim, heads, eta) for _ in range(cls_layers)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.pos_embeder = RefFourier(dim)

    def tokens(self, img):
        b = img.shape[0]
        x, (hp, wp) = self.patch_embed(img)
        x = x + self.pos_embeder(b, hp, wp).reshape(b, -1, x.shape[1]).permute(0, 2, 1)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_features(self, img):
        x = self.tokens(img)
        x = torch.cat((self.cls_token.expand(img.shape[0], -1, -1), x), dim=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, img):
        return self.head(self.forward_features(img)[:, 0])


def tost_to_official(model: nn.Module, tensors: dict | None = None) -> dict:
    """Our ToST tensors (weights or gradients) under the authors' names."""
    sd = model.state_dict() if tensors is None else tensors
    out = {}
    for k, v in sd.items():
        k = k.replace("pos_embed.token_projection.", "pos_embeder.token_projection.")
        if k.startswith("blocks."):
            k = k.replace(".attn.temperature", ".attn.temp").replace(".attn.proj.", ".attn.to_out.0.")
        out[k] = v
    return out


# ----------------------------------------------------------------------------- CBT
class RefCBSA(nn.Module):
    """The authors' ``CBSA``: keys ``proj``, ``step_x``, ``step_rep``, ``to_out``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.proj = nn.Linear(dim, dim, bias=False)
        self.step_x = nn.Parameter(torch.randn(heads, 1, 1))
        self.step_rep = nn.Parameter(torch.randn(heads, 1, 1))
        self.to_out = nn.Linear(dim, dim)
        self.pool = nn.AdaptiveAvgPool2d((8, 8))

    def _attend(self, q, k, v):
        a = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(self.dim_head), dim=-1)
        return a @ v, a

    def forward(self, x):
        b, n, c = x.shape
        side = int(n**0.5)
        w = self.proj(x)
        rep = self.pool(w[:, :-1, :].reshape(b, side, side, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        w = w.reshape(b, n, self.heads, self.dim_head).permute(0, 2, 1, 3)
        rep = rep.reshape(b, 64, self.heads, self.dim_head).permute(0, 2, 1, 3)
        delta, attn = self._attend(rep, w, w)
        rep = rep + self.step_rep * delta
        xd, _ = self._attend(rep, rep, rep)
        xd = self.step_x * (attn.transpose(-1, -2) @ xd)
        return self.to_out(xd.permute(0, 2, 1, 3).reshape(b, n, c))


class RefISTA(nn.Module):
    """The authors' ``ISTA`` (three products: D^T D x and D^T x computed separately)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) / math.sqrt(dim))

    def forward(self, x):
        x1 = F.linear(x, self.weight)
        grad_1 = F.linear(x1, self.weight.t())
        grad_2 = F.linear(x, self.weight.t())
        return F.relu(x + 0.1 * (grad_2 - grad_1) - 0.1 * 0.1)


class RefPreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class RefCBT(nn.Module):
    """``VisionTransformer(attn=CBSA, ffn=ISTA)`` of ``CBSA_image_classification/models.py`` in its layout."""

    def __init__(self, img_size=32, patch=8, dim=64, depth=2, heads=4, num_classes=10, in_chans=3, attn=RefCBSA):
        super().__init__()
        n = (img_size // patch) ** 2
        self.to_patch_embedding = RefConvStem(patch, dim, in_chans)
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            [nn.ModuleList([RefPreNorm(dim, attn(dim, heads)), RefPreNorm(dim, RefISTA(dim))]) for _ in range(depth)]
        )
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def tokens(self, img):
        x, _ = self.to_patch_embedding(img)
        b, n, _ = x.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.pos_embedding[:, : n + 1]
        for attn, ff in self.transformer.layers:
            x = ff(attn(x) + x)
        return x

    def forward(self, img):
        return self.mlp_head(self.tokens(img)[:, 0])


def cbt_to_official(model: nn.Module, tensors: dict | None = None) -> dict:
    """Our CBT tensors (weights or gradients) under the authors' names."""
    sd = model.state_dict() if tensors is None else tensors
    names = {
        "pos_embed": "pos_embedding",
        "cls_token": "cls_token",
        "fc_norm.weight": "mlp_head.0.weight",
        "fc_norm.bias": "mlp_head.0.bias",
        "head.weight": "mlp_head.1.weight",
        "head.bias": "mlp_head.1.bias",
    }
    leaf = {
        "norm1.weight": "0.norm.weight",
        "norm1.bias": "0.norm.bias",
        "attn.qkv.weight": "0.fn.proj.weight",
        "attn.alpha": "0.fn.step_rep",
        "attn.beta": "0.fn.step_x",
        "attn.proj.weight": "0.fn.to_out.weight",
        "attn.proj.bias": "0.fn.to_out.bias",
        "norm2.weight": "1.norm.weight",
        "norm2.bias": "1.norm.bias",
        "ista.weight": "1.fn.weight",
    }
    out = {}
    for k, v in sd.items():
        if k in names:
            out[names[k]] = v
        elif k.startswith("patch_embed."):
            out["to_patch_embedding." + k.removeprefix("patch_embed.")] = v
        else:
            _, i, rest = k.split(".", 2)
            out[f"transformer.layers.{i}.{leaf[rest]}"] = v
    return out


def randomize_all_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values for every parameter and every BatchNorm buffer (running statistics included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # norm scales
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
    return model
