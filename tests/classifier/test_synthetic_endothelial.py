import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cellops.classifier.data import list_class_folders
from cellops.io import read_image_file
from cellops.synthetic.endothelial import CLASSES, generate_cell_image, image_seed, write_endothelial_dataset


def _images(label: str, n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.stack([generate_cell_image(label, size, seed=image_seed(seed, label, i)) for i in range(n)])


def _coherence(image: np.ndarray) -> float:
    """Mean local orientation coherence (structure tensor): 1 for parallel stripes, 0 for no preferred direction."""
    smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.0)
    gy, gx = np.gradient(smooth)
    jxx, jyy, jxy = (ndimage.gaussian_filter(g, 6.0) for g in (gx * gx, gy * gy, gx * gy))
    return float(np.mean(np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-9)))


@pytest.mark.parametrize("label", CLASSES)
@pytest.mark.parametrize("size", [64, 96])
def test_shape_dtype_and_a_grey_micrograph_not_a_saturated_one(label, size):
    image = generate_cell_image(label, size, seed=3)
    assert image.shape == (size, size) and image.dtype == np.uint8
    assert 40 < image.mean() < 215 and image.std() > 5
    assert np.mean((image == 0) | (image == 255)) < 0.02


def test_same_seed_same_bytes_other_seed_class_or_index_another_image():
    a = generate_cell_image("hipsc_ec", 64, seed=image_seed(0, "hipsc_ec", 5))
    assert a.tobytes() == generate_cell_image("hipsc_ec", 64, seed=image_seed(0, "hipsc_ec", 5)).tobytes()
    others = [generate_cell_image("hipsc_ec", 64, seed=image_seed(0, "hipsc_ec", 6)),
              generate_cell_image("hipsc_ec", 64, seed=image_seed(1, "hipsc_ec", 5)),
              generate_cell_image("non_ec", 64, seed=image_seed(0, "non_ec", 5))]
    assert all(a.tobytes() != other.tobytes() for other in others)


def test_written_dataset_is_class_folders_and_each_image_independent_of_how_many_are_written(tmp_path):
    small = write_endothelial_dataset(tmp_path / "a", images_per_class=2, size=48, seed=4)
    large = write_endothelial_dataset(tmp_path / "b", images_per_class=3, size=48, seed=4)
    assert sorted(small) == ["hipsc_ec/hipsc_ec_0000.png", "hipsc_ec/hipsc_ec_0001.png",
                             "non_ec/non_ec_0000.png", "non_ec/non_ec_0001.png"]
    assert all(small[name].read_bytes() == large[name].read_bytes() for name in small)
    data = list_class_folders(tmp_path / "b")
    assert data.classes == sorted(CLASSES) and data.counts() == {"hipsc_ec": 3, "non_ec": 3}
    image = read_image_file(large["non_ec/non_ec_0002.png"])
    assert image.dtype == np.uint8 and image.shape == (48, 48)
    assert (image == generate_cell_image("non_ec", 48, seed=image_seed(4, "non_ec", 2))).all()


def test_an_existing_different_file_is_not_overwritten(tmp_path):
    (tmp_path / "hipsc_ec").mkdir()
    own = tmp_path / "hipsc_ec" / "hipsc_ec_0000.png"
    own.write_bytes(b"a lab's own image")
    with pytest.raises(FileExistsError, match="hipsc_ec_0000.png"):
        write_endothelial_dataset(tmp_path, images_per_class=1, size=32, seed=0)
    assert own.read_bytes() == b"a lab's own image"


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="non_ec"):
        generate_cell_image("fibroblast", 64, seed=0)


def test_endothelial_cells_are_aligned_and_the_others_are_not():
    ec = np.array([_coherence(image) for image in _images("hipsc_ec", 30)])
    other = np.array([_coherence(image) for image in _images("non_ec", 30)])
    assert np.median(ec) > np.median(other) + 0.15
    assert np.mean(ec > np.median(other)) > 0.8 and np.mean(other < np.median(ec)) > 0.8


def test_intensity_histograms_alone_do_not_tell_the_classes_apart():
    # Brightness and contrast come from the same distributions in both classes...
    ec, other = _images("hipsc_ec", 100), _images("non_ec", 100)
    assert abs(ec.mean() - other.mean()) < 8 and abs(ec.std(axis=(1, 2)).mean() - other.std(axis=(1, 2)).mean()) < 3
    # ...and a linear model on 32-bin histograms stays far below what a small CNN reaches (about 0.97-0.98).
    images = np.concatenate([ec, other])
    histograms = np.stack([np.histogram(image, bins=32, range=(0, 256))[0] / image.size for image in images])
    labels = np.repeat([1, 0], 100)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, histograms, labels, cv=5).mean()
    assert accuracy < 0.85, accuracy
