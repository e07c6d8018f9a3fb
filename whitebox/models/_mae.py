"""The masked-autoencoder harness shared by CRATE-MAE and its ViT-MAE twin.

As in CRATE-MAE, the encoder runs on the FULL sequence: masked patches are replaced by a mask
token before the positions are added. Masking follows MAE exactly (per-sample argsort of noise,
``mask`` 1 = removed), so the same ``noise`` gives the same mask as MAE and Hugging Face ViTMAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from einops import rearrange
from timm.models import checkpoint_seq
from torch import nn

from ..layers.declare import linear_flops, merge, prefixed, require
from ._encoder import TokenEncoder


@dataclass
class MAEOutput:
    """Named output of a masked autoencoder; unpacks as ``loss, pred, mask`` like the MAE code.

    Attributes:
        loss: mean squared error over the masked patches (over all patches when none is masked).
        pred: (B, L, p * p * C) predicted patches (normalised pixels when ``norm_pix_loss``).
        mask: (B, L) float, 1 = removed, 0 = kept.
        ids_restore: (B, L) the inverse of the noise argsort.
        latent: (B, 1 + L, d) encoder output.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    latent: torch.Tensor

    def __iter__(self):
        return iter((self.loss, self.pred, self.mask))


PIXEL_STATS = ("patch", "visible")


@dataclass
class MAEReconstruction:
    """Images (B, C, H, W) in the input's normalised space, for display or evaluation.

    Under ``norm_pix_loss`` the model predicts each patch normalised by its own mean and std, so the
    prediction must be un-normalised with some statistics before it can be shown:

    * ``pixel_stats='patch'`` (default; MAE's display convention, ``facebookresearch/mae``'s
      visualisation notebook): every patch with its OWN true mean and std. For a removed patch those
      come from the hidden pixels: the picture of a hidden patch moves when only hidden pixels change
      although the prediction is identical, so it is not the model's reconstruction alone
      (pengzhiliang/MAE-pytorch#40). Good for judging structure, not for judging what was inferred.
    * ``pixel_stats='visible'`` (leak-free): kept patches with their own statistics (they are
      visible), removed patches with the average statistics of the image's VISIBLE patches (mean of
      their means, mean of their stds): the picture depends on visible pixels and the prediction only.

    Without ``norm_pix_loss`` the prediction is in pixel space and both give the same images.

    Attributes:
        masked: the input with removed patches set to zero.
        reconstruction: the model's prediction for every patch.
        pasted: kept patches from the input, removed ones from the prediction.
        mask: (B, 1, H, W), 1 where a patch was removed.
        pixel_stats: ``'patch'`` or ``'visible'`` (see above); ``None`` without ``norm_pix_loss``.
    """

    masked: torch.Tensor
    reconstruction: torch.Tensor
    pasted: torch.Tensor
    mask: torch.Tensor
    pixel_stats: str | None = None


def check_mask_ratio(mask_ratio: object) -> float:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
        raise TypeError(f"mask_ratio must be a float in [0, 1), got {type(mask_ratio).__name__}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1) (the fraction of patches removed), got {mask_ratio}")
    return float(mask_ratio)


class MaskedAutoencoder(nn.Module):
    """Encoder (a ``TokenEncoder``) + decoder blocks + decoder LN + linear pixel prediction.

    Subclasses build ``encoder``, ``decoder_embed``, ``decoder_blocks``, ``decoder_norm`` and
    ``decoder_pred``. The backbone interface (``forward_features``, ``forward_head``,
    ``forward_intermediates``, ``reset_classifier`` ...) is the encoder's, on unmasked images.

    Args:
        embed_dim: encoder width d.
        norm_pix_loss: targets are per-patch normalised pixels (MAE's ``norm_pix_loss``).
        mask_ratio: default fraction of patches removed, in [0, 1).

    Raises:
        TypeError, ValueError: ``mask_ratio`` not a float in [0, 1).

    Source: He et al., arXiv 2111.06377 (masking and loss), facebookresearch/mae ``models_mae.py``; the
    encoder runs over the full sequence with mask tokens, as CRATE-MAE's official code.
    """

    adaptable_args: ClassVar[frozenset[str]] = frozenset({"mask_ratio", "norm_pix_loss"})
    """Arguments a checkpoint may be reloaded with other values of (they change training, not the weights)."""

    encoder: TokenEncoder
    decoder_embed: nn.Module
    decoder_blocks: nn.Sequential
    decoder_norm: nn.Module
    decoder_pred: nn.Linear

    def __init__(self, embed_dim: int, norm_pix_loss: bool = False, mask_ratio: float = 0.75) -> None:
        super().__init__()
        self.norm_pix_loss = norm_pix_loss
        self.mask_ratio = check_mask_ratio(mask_ratio)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.grad_checkpointing = False

    def init_weights(self) -> None:
        """MAE initialisation (xavier-uniform linears, zero biases, unit LayerNorms, N(0, 0.02) tokens)."""
        self.apply(_init_mae)
        self.encoder.init_weights_mae()
        nn.init.normal_(self.mask_token, std=0.02)

    # ----------------------------------------------------------------------------- geometry
    @property
    def patch_size(self) -> int:
        """Patch side p in pixels (the encoder's)."""
        return self.encoder.patch_embed.patch_size

    @property
    def in_chans(self) -> int:
        """Input channels C (the encoder's)."""
        return self.encoder.patch_embed.in_chans

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p * p * C), each patch flattened as (p, q, c) like MAE."""
        self.encoder.patch_embed.dynamic_grid(imgs)
        p = self.patch_size
        return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def unpatchify(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, L, p * p * C) -> (B, C, H, W); ``grid_size`` (gh, gw) defaults to a square grid."""
        if grid_size is None:
            side = round(x.shape[1] ** 0.5)
            if side * side != x.shape[1]:
                raise ValueError(f"{x.shape[1]} patches do not form a square grid; pass grid_size=(gh, gw)")
            grid_size = (side, side)
        p = self.patch_size
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=grid_size[0], w=grid_size[1], p=p, q=p)

    # ----------------------------------------------------------------------------- masking and loss
    @staticmethod
    def random_masking(
        batch: int, length: int, mask_ratio: float, noise: torch.Tensor | None = None, device: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE masking: keep the ``int(L * (1 - mask_ratio))`` patches with the smallest noise.

        Returns ``mask`` (B, L; 1 = removed, float) and ``ids_restore`` (B, L).
        """
        len_keep = int(length * (1 - mask_ratio))
        if len_keep == 0:
            raise ValueError(
                f"mask_ratio {mask_ratio} keeps none of the {length} patches (int({length} * (1 - mask_ratio)) = 0); "
                f"use a mask_ratio below {1 - 1 / length:.4g}"
            )
        if noise is None:
            noise = torch.rand(batch, length, device=device)
        elif not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor of shape (batch, num_patches), got {type(noise).__name__}")
        elif tuple(noise.shape) != (batch, length):
            raise ValueError(
                f"noise must have shape (batch, num_patches) = {(batch, length)}, got {tuple(noise.shape)}"
            )
        elif not noise.is_floating_point():
            raise TypeError(
                f"noise must be a floating-point tensor (its argsort orders the patches), got {noise.dtype}"
            )
        else:
            noise = noise.to(device)  # e.g. CPU noise with GPU images
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = (ids_restore >= len_keep).float()
        return mask, ids_restore

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over removed patches (all patches if none is removed)."""
        target = self.patchify(imgs).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        removed = mask.sum()
        masked_mean = (per_patch * mask).sum() / removed.clamp_min(1.0)
        # no host sync: choose on device
        return torch.where(removed > 0, masked_mean, per_patch.mean())

    # ----------------------------------------------------------------------------- forward
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, embed, encode: returns ``latent`` (B, 1 + L, d), ``mask`` and ``ids_restore``."""
        mask_ratio = self.mask_ratio if mask_ratio is None else check_mask_ratio(mask_ratio)
        grid = self.encoder.patch_embed.dynamic_grid(imgs)
        length = grid[0] * grid[1]
        mask, ids_restore = self.random_masking(imgs.shape[0], length, mask_ratio, noise, imgs.device)
        x = self.encoder.embed(imgs, mask=mask, mask_token=self.mask_token)
        return self.encoder.norm(self.encoder.forward_blocks(x)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode all tokens and predict pixels; the class token is dropped: (B, L, p * p * C)."""
        x = self.decoder_embed(latent)
        if self.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint_seq(self.decoder_blocks, x)
        else:
            x = self.decoder_blocks(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> MAEOutput:
        """Masked reconstruction. ``mask_ratio`` defaults to the model's (0.75); ``noise`` (B, L)
        fixes the mask exactly as MAE's argsort does."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent)
        loss = self.forward_loss(imgs, pred, mask)
        return MAEOutput(loss=loss, pred=pred, mask=mask, ids_restore=ids_restore, latent=latent)

    @torch.no_grad()
    def reconstruct(
        self,
        imgs: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        pixel_stats: str = "patch",
    ) -> MAEReconstruction:
        """Masked input, reconstruction and the two pasted together, as images like ``imgs``.

        ``pixel_stats`` chooses how a ``norm_pix_loss`` prediction is un-normalised: ``'patch'``
        (MAE's display convention: each patch's own true statistics, which for removed patches leak
        hidden pixels) or ``'visible'`` (leak-free: removed patches get the visible patches' average
        statistics). See ``MAEReconstruction``. Raises ValueError for another value.
        """
        if pixel_stats not in PIXEL_STATS:
            raise ValueError(
                f"pixel_stats must be 'patch' (each patch's own true statistics, MAE's display convention) or "
                f"'visible' (leak-free: the visible patches' statistics), got {pixel_stats!r}"
            )
        out = self(imgs, mask_ratio=mask_ratio, noise=noise)
        pred = out.pred.float()
        if self.norm_pix_loss:  # back from per-patch normalised pixels
            target = self.patchify(imgs).float()
            mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
            std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
            if pixel_stats == "visible":
                kept = (1 - out.mask).unsqueeze(-1)  # (B, L, 1); MAE keeps at least one patch
                count = kept.sum(dim=1, keepdim=True)
                removed = out.mask.unsqueeze(-1).bool()
                mean = torch.where(removed, (mean * kept).sum(dim=1, keepdim=True) / count, mean)
                std = torch.where(removed, (std * kept).sum(dim=1, keepdim=True) / count, std)
            pred = pred * std + mean
        grid = self.encoder.patch_embed.dynamic_grid(imgs)
        recon = self.unpatchify(pred, grid).to(imgs.dtype)
        mask = self.unpatchify(out.mask[..., None].expand(-1, -1, self.patch_size**2 * self.in_chans), grid)
        mask = mask[:, :1].to(imgs.dtype)
        return MAEReconstruction(
            masked=imgs * (1 - mask),
            reconstruction=recon,
            pasted=imgs * (1 - mask) + recon * mask,
            mask=mask,
            pixel_stats=pixel_stats if self.norm_pix_loss else None,
        )

    @property
    def task(self) -> str:
        """The Hub pipeline tag: a masked autoencoder is a pretrained feature extractor (with a head, a classifier)."""
        return "image-classification" if self.num_classes > 0 else "image-feature-extraction"

    def flops(self, grid_size: tuple[int, int], features_only: bool = False) -> dict[str, int]:
        """FLOPs of one masked-reconstruction forward (the encoder's, then ``decoder_embed``,
        ``decoder.<block component>``, ``decoder_pred`` on every token); ``features_only``: the encoder's.

        The encoder runs on the full sequence, so the count does not depend on the mask ratio.
        """
        parts = [self.encoder.flops(grid_size, features_only=True)]
        if not features_only:
            n = self.encoder.num_prefix_tokens + grid_size[0] * grid_size[1]
            if isinstance(self.decoder_embed, nn.Linear):
                parts.append({"decoder_embed": linear_flops(self.decoder_embed, n)})
            for i, blk in enumerate(self.decoder_blocks):
                parts.append(prefixed("decoder", require(blk, "flops", f"decoder block {i}", "count FLOPs of")(n)))
            parts.append({"decoder_pred": linear_flops(self.decoder_pred, n)})  # the class row is dropped after
        return merge(*parts)

    # ----------------------------------------------------------------------------- backbone interface
    @property
    def num_features(self) -> int:
        """Token width d of the encoder output (timm's backbone interface)."""
        return self.encoder.num_features

    @property
    def head_hidden_size(self) -> int:
        """Width of the pooled features before the head (timm's backbone interface)."""
        return self.encoder.head_hidden_size

    @property
    def num_classes(self) -> int:
        """Classes of the encoder's head (0: no head)."""
        return self.encoder.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (B, 1 + L, d) of unmasked images."""
        return self.encoder.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The encoder's ``forward_head``: tokens (B, 1 + N, d) -> logits (B, num_classes), or pooled
        features (B, d) with ``pre_logits=True``.
        """
        return self.encoder.forward_head(x, pre_logits=pre_logits)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The encoder's feature records (timm's ``features_only``): one per block, reduction = patch size."""
        return self.encoder.feature_info

    def forward_intermediates(self, x: torch.Tensor, **kwargs: Any) -> Any:
        """The encoder's ``forward_intermediates`` (timm's signature and outputs) on unmasked images."""
        return self.encoder.forward_intermediates(x, **kwargs)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, **kwargs: Any) -> list[int]:
        """The encoder's ``prune_intermediate_layers``: keep the blocks up to ``indices``; returns the kept indices."""
        return self.encoder.prune_intermediate_layers(indices, **kwargs)

    def get_classifier(self) -> nn.Module:
        """The encoder's head module (``nn.Identity`` when it has none)."""
        return self.encoder.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new encoder head for ``num_classes`` (0: none), optionally a new ``global_pool``.

        Raises:
            ValueError: ``num_classes`` out of range or ``global_pool`` not 'token', 'avg' or ''.
        """
        self.encoder.reset_classifier(num_classes, global_pool)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (encoder and decoder) to save memory."""
        self.grad_checkpointing = enable
        self.encoder.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay: the encoder's (class token, positions) and ``mask_token``."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise schedules: stem, encoder blocks, then the decoder."""
        return dict(
            stem=r"^mask_token|^encoder\.cls_token|^encoder\.pos_embed|^encoder\.patch_embed",
            blocks=r"^encoder\.blocks\.(\d+)"
            if coarse
            else [(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))],
            decoder=r"^decoder_",
        )


def _init_mae(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
