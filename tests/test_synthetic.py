import numpy as np
import pytest

from cellops.synthetic.em import generate_em_volume, write_lucchi_dataset


def test_volume_shape_dtype_and_binary_ground_truth(small_volume):
    assert small_volume.image.shape == small_volume.mask.shape == (6, 96, 96)
    assert small_volume.image.dtype == small_volume.mask.dtype == np.uint8
    assert set(np.unique(small_volume.mask).tolist()) == {0, 255}
    assert small_volume.n_mitochondria >= 1


def test_image_is_textured_not_blobs_on_black(small_volume):
    image = small_volume.image.astype(float)
    background = image[small_volume.mask == 0]
    foreground = image[small_volume.mask > 0]
    # Grey cytoplasm with texture, mitochondria darker on average but overlapping in intensity.
    assert 100 < background.mean() < 200 and background.std() > 10
    assert foreground.mean() < background.mean()
    assert np.percentile(foreground, 90) > np.percentile(background, 10)


def test_foreground_fraction_near_target():
    vol = generate_em_volume((8, 128, 128), seed=5, mitochondria_fraction=0.08)
    assert 0.04 < vol.foreground_fraction < 0.16


def test_same_seed_same_bytes_different_seed_differs():
    a = generate_em_volume((3, 64, 64), seed=11)
    b = generate_em_volume((3, 64, 64), seed=11)
    c = generate_em_volume((3, 64, 64), seed=12)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.image.tobytes() != c.image.tobytes()


def test_written_dataset_is_identical_byte_for_byte(tmp_path):
    first = write_lucchi_dataset(tmp_path / "a", (3, 64, 64), seed=2)
    second = write_lucchi_dataset(tmp_path / "b", (3, 64, 64), seed=2)
    assert sorted(p.name for p in first.values()) == [
        "testing.tif", "testing_groundtruth.tif", "training.tif", "training_groundtruth.tif"
    ]
    for key in first:
        assert first[key].read_bytes() == second[key].read_bytes()
    # Training and testing volumes are different draws.
    assert first["training"].read_bytes() != first["testing"].read_bytes()


@pytest.mark.parametrize("shape", [(64, 64), (0, 64, 64)])
def test_bad_shape_is_refused(shape):
    with pytest.raises(ValueError, match="shape"):
        generate_em_volume(shape)
