"""Loading FACER's FaRL face-attribute classifier (``farl/celeba/224``) without CUDA.

facer's own ``farl_classification`` calls ``.cuda()`` unconditionally, so it cannot build the
network on a CPU-only worker. This module builds the same network (same parameter names, so
the released state dict loads strictly) on any device, and infers its shape from the state
dict, so the real weights (ViT-B/16: width 768, 12 layers, 12 heads) and the tiny test ones
(``models.tiny``) load through one code path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: CLIP/FaRL attention heads are 64 channels wide.
HEAD_WIDTH = 64


@dataclass(frozen=True)
class FarlShape:
    """The hyper-parameters of a FaRL classification network."""

    input_resolution: int
    patch_size: int
    width: int
    layers: int
    heads: int
    num_classes: int

    @property
    def feature_layers(self) -> list[int]:
        """The transformer layers the head reads (facer's celeba/224 uses the last: [11])."""
        return [self.layers - 1]


class FaceAttributeNet(nn.Module):
    """facer's ``FACTransformer`` without its ``.cuda()``: logits = head(*backbone(image)).

    ``image``: float tensor (b, 3, 224, 224), CLIP-normalised. Returns logits (b, num_classes);
    apply ``sigmoid`` for attribute probabilities.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(*self.backbone(image))


def build_farl_classifier(shape: FarlShape) -> FaceAttributeNet:
    """Build the network exactly as ``facer.farl.classification.farl_classification`` does."""
    from facer.farl.classification import VITClassificationHeadV0, add_method, get_clip_encode_func
    from facer.farl.model import VisualTransformer

    backbone = VisualTransformer(
        input_resolution=shape.input_resolution,
        patch_size=shape.patch_size,
        width=shape.width,
        layers=shape.layers,
        heads=shape.heads,
        output_dim=512,  # the projection is deleted below; its size does not matter
    )
    del backbone.proj
    del backbone.ln_post
    add_method(backbone, "forward", get_clip_encode_func(shape.feature_layers))
    head = VITClassificationHeadV0(
        num_features=len(shape.feature_layers), channel=shape.width, num_labels=shape.num_classes, norm=True
    )
    return FaceAttributeNet(backbone, head).float()


def infer_farl_shape(state_dict: dict[str, torch.Tensor]) -> FarlShape:
    """Read the network's shape off its state dict."""
    conv1 = state_dict["backbone.conv1.weight"]  # (width, 3, patch, patch)
    width, patch = int(conv1.shape[0]), int(conv1.shape[-1])
    tokens = int(state_dict["backbone.positional_embedding"].shape[0])  # grid**2 + 1
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"positional embedding of {tokens} tokens is not a square grid + 1")
    block = re.compile(r"backbone\.transformer\.resblocks\.(\d+)\.")
    layers = 1 + max(int(m[1]) for k in state_dict if (m := block.match(k)))
    return FarlShape(
        input_resolution=grid * patch,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=max(1, width // HEAD_WIDTH),
        num_classes=int(state_dict["head.final_fc.weight"].shape[0]),
    )


def load_facer_attribute_model(path: Path, device: torch.device) -> nn.Module:
    """Load ``face_attribute.farl.celeba.pt`` (a plain state dict) strictly, in eval mode."""
    state_dict = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = build_farl_classifier(infer_farl_shape(state_dict))
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval().requires_grad_(False)
