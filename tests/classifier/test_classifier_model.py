"""The efficient classifier and its class-activation maps (groundwork of the endothelial-cell classifier)."""

import pytest
import torch

from cellops.classifier.data import list_class_folders
from models.cam import class_activation_maps
from models.classifier import EfficientCellNet


def test_the_efficient_network_is_small_and_takes_grey_or_rgb():
    grey, rgb = EfficientCellNet(in_channels=1, num_classes=2), EfficientCellNet(in_channels=3, num_classes=5)
    assert sum(p.numel() for p in grey.parameters()) < 1_000_000
    assert grey(torch.rand(2, 1, 128, 96)).shape == (2, 2) and rgb(torch.rand(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match="two classes"):
        EfficientCellNet(num_classes=1)


def test_cam_is_exact_its_mean_plus_bias_is_the_logit():
    torch.manual_seed(0)
    net = EfficientCellNet(in_channels=1, num_classes=3).eval()
    images = torch.rand(4, 1, 64, 64)
    classes = torch.tensor([0, 1, 2, 1])
    features = net.feature_maps(images)
    maps, logits = class_activation_maps(net, images, classes, normalise=False)
    # At feature resolution the map's mean plus the class bias is the class logit (GAP + one linear layer).
    low_res = torch.einsum("nk,nkhw->nhw", net.classifier.weight[classes], features)
    expected = logits[torch.arange(4), classes]
    torch.testing.assert_close(low_res.mean(dim=(1, 2)) + net.classifier.bias[classes], expected, atol=1e-5, rtol=0)
    assert maps.shape == (4, 64, 64)
    normalised, _ = class_activation_maps(net, images)  # predicted class, scaled to [0, 1] per image
    assert torch.allclose(normalised.amax(dim=(1, 2)), torch.ones(4)) and torch.all(normalised.amin(dim=(1, 2)) == 0)


def test_class_folders_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_class_folders(tmp_path / "missing")
    (tmp_path / "ec").mkdir()
    (tmp_path / "ec" / "a.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="found 1 class folder"):
        list_class_folders(tmp_path)
    (tmp_path / "non_ec").mkdir()
    (tmp_path / "non_ec" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no images .* in class 'non_ec'"):
        list_class_folders(tmp_path)
    (tmp_path / "non_ec" / "b.TIF").write_bytes(b"x")
    data = list_class_folders(tmp_path)
    assert data.classes == ["ec", "non_ec"] and data.labels == [0, 1] and data.files[1].name == "b.TIF"
