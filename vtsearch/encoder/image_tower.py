"""open_clip image-tower internals: the pooled vector and the regions, per kind of tower.

open_clip builds ``model.visual`` as its own ``VisionTransformer`` (CLIP ViTs, CoCa), its
``ModifiedResNet``, or a timm network wrapped in ``TimmModel`` (``trunk``: the timm model,
whose classifier head open_clip often sized to the joint space; ``head``: open_clip's own
projection, often empty). Regions are the image's patch grid, one feature per cell:

- open_clip ViT pooled by its class token or by averaging: the last block's patch
  tokens, in the tower's width (source ``blocks``, what new indexes keep). ``ln_post``
  and ``proj`` were trained for the class token only, and they lose what a trained scorer
  reads (shape, on the varied shapes set: docs/reranker-notes.md). Indexes made before
  keep the tokens after ``ln_post``, projected into the joint space (source ``final``).
- timm ViT / EVA pooled by class token or average (EVA02, MobileCLIP-B): the trunk's
  ``forward_features`` minus its prefix tokens, then its head (``fc_norm``, ``head``)
  and open_clip's ``head`` per token, into the joint space.
- timm ViT / EVA pooled by attention (MAP: SigLIP, SigLIP2, PE-Core): the patch tokens
  after the trunk's final norm, in the trunk's width. The attention pool does not act
  token by token; a trained scorer learns to read them (``region_dim`` = that width).
- timm trunks pooled by averaging a feature map (FastViT: MobileCLIP2; ConvNeXt; Swin): the
  map (B, C, h, w), then the head's norm and linear per position. For FastViT this is
  exact: averaging and a linear map commute, so the regions average to the vector.
- CoCa (open_clip ViT with an attentional pooler): the transformer's tokens *before* the
  pooler, class token first (``prefix`` = 1), in the tower's width. The pooler's 255
  outputs are what CoCa's text decoder cross-attends to; running the pooler per query
  on the shortlist costs a few percent of the decoder and keeps 3.4x fewer bytes per
  image (ViT-B-32: 50 x 768 against 255 x 512; see ``vtsearch.query.decoder``).
- anything else (ResNets, ...): no regions, with the reason.

Only this module knows those layouts; :class:`~vtsearch.encoder.Encoder` asks
:func:`image_tower` for the one that fits its model.
"""

from __future__ import annotations

import torch

__all__ = ["ImageTower", "image_tower"]


class ImageTower:
    """Runs ``model.visual``: (B, 3, H, W) pixels → the pooled vector (B, D) and, when
    asked and the tower has them, regions (B, h*w, ``region_dim``) on the ``grid``."""

    grid: tuple[int, int] | None = None  # (h, w) patch grid; None: no regions
    region_dim: int = 0  # of the regions at the first of ``sources``
    prefix: int = 0  # tokens before the grid in each image's regions (CoCa's class token)
    no_regions: str | None = None  # why there are none (None when there are)
    sources: tuple[str, ...] = ("final",)  # where in the tower regions can be taken; the first is new indexes'

    def __init__(self, visual: torch.nn.Module):
        self.visual = visual

    def region_dim_of(self, source: str) -> int:
        """The width of the regions taken at ``source``."""
        return self.region_dim

    def __call__(self, pixels: torch.Tensor, regions: bool,
                 source: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class PooledOnly(ImageTower):
    """A tower whose output is only the pooled vector (or a tuple led by it, as CoCa's)."""

    def __init__(self, visual: torch.nn.Module, reason: str):
        super().__init__(visual)
        self.no_regions = reason

    def __call__(self, pixels: torch.Tensor, regions: bool, source: str | None = None) -> tuple[torch.Tensor, None]:
        output = self.visual(pixels)
        return (output[0] if isinstance(output, tuple) else output), None  # (B, D)


class ClipViT(ImageTower):
    """open_clip's ``VisionTransformer`` pooled by class token or average: the last
    block's patch tokens (``blocks``), or those after ``ln_post``, projected by ``proj``
    (``final``). ``visual.forward`` split in two, so the pooled vector is the model's own."""

    sources = ("blocks", "final")

    def __init__(self, visual: torch.nn.Module, embed_dim: int):
        super().__init__(visual)
        self.grid = _pair(visual.grid_size)
        self.region_dim = int(visual.conv1.out_channels)  # "blocks": the tower's width
        self.final_dim = embed_dim if visual.proj is not None else int(visual.ln_post.normalized_shape[0])

    def region_dim_of(self, source: str) -> int:
        return self.final_dim if source == "final" else self.region_dim

    def __call__(self, pixels: torch.Tensor, regions: bool,
                 source: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.visual.transformer(self.visual._embeds(pixels))  # (B, 1 + h*w, width), class token first
        pooled, final = self.visual._pool(tokens)  # as visual.forward: (B, width), (B, h*w, width) after ln_post
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj  # (B, D)
        if not regions:
            return pooled, None
        if (source or self.sources[0]) == "blocks":
            return pooled, tokens[:, 1:]  # (B, h*w, width)
        if self.visual.proj is not None:
            final = final @ self.visual.proj  # (B, h*w, D) in the joint space
        return pooled, final


class CocaTokens(ImageTower):
    """open_clip's ``VisionTransformer`` pooled by an attentional pooler (CoCa): the
    transformer's tokens before the pooler, (B, 1 + h*w, width), class token first.
    ``visual.forward`` split in two, so the pooled vector is the model's own."""

    prefix = 1

    def __init__(self, visual: torch.nn.Module):
        super().__init__(visual)
        self.grid = _pair(visual.grid_size)
        self.region_dim = int(visual.conv1.out_channels)  # the tower's width

    def __call__(self, pixels: torch.Tensor, regions: bool,
                 source: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.visual.transformer(self.visual._embeds(pixels))  # (B, 1 + h*w, width)
        pooled, _ = self.visual._pool(tokens)  # (B, D) through the attentional pooler
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled, (tokens if regions else None)


class TimmTokens(ImageTower):
    """A timm ViT or EVA trunk: (B, prefix + h*w, C) tokens from ``forward_features``."""

    def __init__(self, visual: torch.nn.Module, embed_dim: int):
        super().__init__(visual)
        trunk = visual.trunk
        self.grid = _pair(trunk.patch_embed.grid_size)
        self.map_pooled = getattr(trunk, "attn_pool", None) is not None
        self.region_dim = int(trunk.num_features) if self.map_pooled else embed_dim

    def __call__(self, pixels: torch.Tensor, regions: bool,
                 source: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        trunk = self.visual.trunk
        tokens = trunk.forward_features(pixels)  # (B, prefix + h*w, C) after the final norm
        pooled = self.visual.head(trunk.forward_head(tokens))  # (B, D): TimmModel.forward
        if not regions:
            return pooled, None
        patches = tokens[:, trunk.num_prefix_tokens:]  # (B, h*w, C)
        if not self.map_pooled:
            patches = self.visual.head(trunk.head(trunk.fc_norm(patches)))  # (B, h*w, D)
        return pooled, patches


class TimmConv(ImageTower):
    """A timm conv trunk pooled by averaging: (B, C, h, w) maps from ``forward_features``
    ((B, h, w, C) for trunks whose ``output_fmt`` says NHWC, as Swin's)."""

    def __init__(self, visual: torch.nn.Module, embed_dim: int):
        super().__init__(visual)
        trunk = visual.trunk
        self.channels_last = getattr(trunk, "output_fmt", "NCHW") == "NHWC"
        reduction = int(trunk.feature_info[-1]["reduction"])
        height, width = _pair(visual.image_size)
        self.grid = (height // reduction, width // reduction)
        self.region_dim = embed_dim

    def __call__(self, pixels: torch.Tensor, regions: bool,
                 source: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        trunk = self.visual.trunk
        maps = trunk.forward_features(pixels)  # (B, C, h, w), or (B, h, w, C)
        pooled = self.visual.head(trunk.forward_head(maps))  # (B, D): TimmModel.forward
        if not regions:
            return pooled, None
        head = trunk.head
        if hasattr(head, "norm"):
            maps = head.norm(maps)  # ConvNeXt: a channel norm, applied where it would after pooling
        cells = maps.flatten(1, 2) if self.channels_last else maps.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cells = getattr(head, "pre_logits", torch.nn.Identity())(cells)
        cells = self.visual.head(head.fc(cells))  # (B, h*w, D)
        if cells.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(f"{type(trunk).__name__} made {cells.shape[1]} regions, not {self.grid}")
        return pooled, cells


def image_tower(model: torch.nn.Module, embed_dim: int) -> ImageTower:
    """The :class:`ImageTower` for ``model.visual``."""
    visual = model.visual
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        return _timm_tower(visual, trunk, embed_dim)
    if hasattr(visual, "output_tokens") and hasattr(visual, "grid_size"):
        if getattr(visual, "attn_pool", None) is not None:
            return CocaTokens(visual)
        return ClipViT(visual, embed_dim)
    return PooledOnly(visual, f"vtsearch has no region path for its {type(visual).__name__} image tower")


def _timm_tower(visual: torch.nn.Module, trunk: torch.nn.Module, embed_dim: int) -> ImageTower:
    name = type(trunk).__name__
    if hasattr(visual.head, "pool"):  # open_clip's abs_attn / rot_attn pooling
        return PooledOnly(visual, f"open_clip pools its {name} trunk through an attention pooler")
    if all(hasattr(trunk, part) for part in ("patch_embed", "num_prefix_tokens", "fc_norm", "head", "forward_head")):
        return TimmTokens(visual, embed_dim)
    pool = getattr(getattr(trunk, "head", None), "global_pool", None)
    if (getattr(pool, "pool_type", None) == "avg"
            and isinstance(getattr(trunk.head, "fc", None), (torch.nn.Linear, torch.nn.Identity))
            and hasattr(trunk, "feature_info")):
        return TimmConv(visual, embed_dim)
    return PooledOnly(visual, f"vtsearch has no region path for its timm {name} image tower")


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
