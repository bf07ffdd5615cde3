import numpy as np
import pytest

from cellops.synthetic.nuclei import generate_nuclei_image
from cellops.synthetic.nuclei_domains import LAB_DOMAIN, _nucleoli, generate_lab_nuclei_image


def test_lab_field_is_8_bit_stretched_with_the_generators_exact_labels_and_the_same_bytes_for_a_seed():
    field = generate_lab_nuclei_image((128, 128), seed=3, n_nuclei=6)
    again = generate_lab_nuclei_image((128, 128), seed=3, n_nuclei=6)
    drawn = generate_nuclei_image("Control", (128, 128), seed=3, n_nuclei=6, **LAB_DOMAIN)
    assert field.image.dtype == np.uint8 and field.image.min() == 0 and field.image.max() == 255
    assert np.array_equal(field.image, again.image)
    assert np.array_equal(field.labels, drawn.labels) and field.labels.max() > 0
    assert not np.array_equal(generate_lab_nuclei_image((128, 128), seed=4, n_nuclei=6).image, field.image)


def test_nucleoli_darken_pixels_inside_nuclei_only_and_never_below_the_depth():
    labels = np.zeros((60, 60), np.int32)
    labels[10:30, 10:30], labels[35:55, 35:55] = 1, 2
    dark = _nucleoli(labels, np.random.default_rng(0), (2, 2), 0.55, 2.0)
    assert np.all(dark[labels == 0] == 1.0)
    for label in (1, 2):
        assert dark[labels == label].min() < 0.8  # every nucleus has its nucleoli
    assert dark.min() >= 1.0 - 0.55 - 1e-12


@pytest.mark.parametrize("low, high", [(50.0, 10.0), (-1.0, 99.0), (1.0, 101.0)])
def test_lab_field_refuses_percentiles_out_of_order_or_range(low, high):
    with pytest.raises(ValueError, match="percentiles"):
        generate_lab_nuclei_image((64, 64), seed=0, n_nuclei=2, low_percentile=low, high_percentile=high)
