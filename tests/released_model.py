"""A transcription of the released code's model, the reference of tests/test_resnet.py.

Source: https://github.com/rjiang03/HCL, main/SCL/model.py (main/UCL/model.py is the same), class `Model`,
kept as written there except for formatting and the torchvision import, which is passed in (the test
skips where torchvision does not load). Its forward returns (feature, out_normalized): the 2048 trunk
features and the unit-ball-clipped head output that the losses and the mean classifier use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def released_model(torchvision_models: Any, feature_dim: int = 128) -> nn.Module:
    class Model(nn.Module):
        def __init__(self, feature_dim=128):
            super().__init__()

            self.f = []
            for name, module in torchvision_models.resnet50().named_children():
                if name == "conv1":
                    module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
                if not isinstance(module, nn.Linear) and not isinstance(module, nn.MaxPool2d):
                    self.f.append(module)
            # encoder
            self.f = nn.Sequential(*self.f)
            # projection head
            self.g = nn.Sequential(
                nn.Linear(2048, 512, bias=False),
                nn.BatchNorm1d(512),
                nn.ReLU(inplace=True),
                nn.Linear(512, feature_dim, bias=True),
            )

        def forward(self, x):
            x = self.f(x)
            feature = torch.flatten(x, start_dim=1)
            out = self.g(feature)
            norms = out.norm(p=2, dim=1, keepdim=True)

            # Compute scaling factors: If norm > 1, then scale, otherwise keep as 1.
            scaling_factors = torch.where(norms > 1, 1.0 / norms, torch.ones_like(norms))

            # Apply scaling
            out_normalized = out * scaling_factors

            return feature, out_normalized

    return Model(feature_dim)
