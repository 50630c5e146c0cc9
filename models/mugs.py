"""Visual DNA's feature network (Ramtoula et al., CVPR 2023): the Mugs ViT that the ``vdna``
package builds for ``mugs_vit_base`` (``vdna.networks.mugs_vit.vit_base(num_relation_blocks=1)``:
ViT-B/16, width 768, 12 layers, 12 heads, qkv bias, LayerNorm eps 1e-6, one relation block),
shaped from its state dict so the real weights and the tiny test ones (``models.tiny``) load
through one code path, strictly.

The weights file is the package's own (``Mugs/mugs_vit_base/weights.pth`` of its Hugging Face
repository): ``torch.load(path)["state_dict"]``. The class is the package's; it is imported when
a network is built (the ``vdna`` package is in ``veil[eval]``), never at import of this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

#: ViT attention heads are 64 channels wide (ViT-S 384/6, ViT-B 768/12, ViT-L 1024/16)
HEAD_WIDTH = 64
#: the real network's shape (``vit_base``)
MUGS_BASE = {"embed_dim": 768, "depth": 12, "patch_size": 16}


@dataclass(frozen=True)
class MugsShape:
    embed_dim: int
    depth: int
    patch_size: int

    @property
    def heads(self) -> int:
        return max(1, self.embed_dim // HEAD_WIDTH)

    @classmethod
    def of(cls, state_dict: dict[str, torch.Tensor]) -> MugsShape:
        depth = 1 + max(int(m[1]) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
        proj = state_dict["patch_embed.proj.weight"]
        return cls(embed_dim=int(proj.shape[0]), depth=depth, patch_size=int(proj.shape[-1]))


def build_mugs_vit(shape: MugsShape) -> Any:
    """``vdna``'s Mugs ``VisionTransformer`` of ``shape``, as ``vit_base(num_relation_blocks=1)``
    builds it (the relation block is in the weights file; Visual DNA never runs it)."""
    from vdna.networks.mugs_vit import VisionTransformer

    return VisionTransformer(
        patch_size=shape.patch_size,
        embed_dim=shape.embed_dim,
        depth=shape.depth,
        num_heads=shape.heads,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_relation_blocks=1,
    )


def load_mugs_vit(path: Any, device: str | torch.device = "cpu") -> Any:
    """The network in ``path`` (``{"state_dict": ...}``), loaded strictly, frozen, in eval mode."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)["state_dict"]
    net = build_mugs_vit(MugsShape.of(state))
    net.load_state_dict(state, strict=True)
    for p in net.parameters():
        p.requires_grad = False
    return net.eval().to(device)
