"""The large backbones (DenseNet-121, EfficientNet-B0, ResNet-50) embed grey images.

Building each takes seconds: integration, not unit (the small ones: unit/test_networks.py).
"""

from __future__ import annotations

import pytest

from helpers.networks import LARGE_ARCHITECTURES, assert_embeds_grey_images

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("arch", LARGE_ARCHITECTURES)
def test_build_backbone_embeds_grey_images(arch: str) -> None:
    assert_embeds_grey_images(arch)
