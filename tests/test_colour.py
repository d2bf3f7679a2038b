"""Garment colour error: sRGB -> CIELAB and CIEDE2000 against published reference values."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.colour import ciede2000, garment_colour_error, garment_pixels, overlap_colour_error, srgb_to_lab

# Sharma, Wu and Dalal (2005), Table 1: the 34 CIEDE2000 test pairs (L1, a1, b1, L2, a2, b2, dE00).
SHARMA_2005 = np.array(
    [
        [50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425],
        [50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615],
        [50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412],
        [50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000],
        [50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000],
        [50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000],
        [50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669],
        [50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669],
        [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792],
        [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792],
        [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195],
        [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195],
        [50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045],
        [50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045],
        [50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461],
        [50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065],
        [50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492],
        [50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977],
        [50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030],
        [50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535],
        [50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000],
        [50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000],
        [50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000],
        [50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000],
        [60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644],
        [63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630],
        [61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731],
        [35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645],
        [22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373],
        [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
        [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
        [90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381],
        [6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377],
        [2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082],
    ]
)


def test_ciede2000_matches_sharma_2005_table_1():
    got = ciede2000(SHARMA_2005[:, :3], SHARMA_2005[:, 3:6])  # (34,)
    assert got.shape == (34,)
    np.testing.assert_allclose(got, SHARMA_2005[:, 6], rtol=0, atol=5e-5)  # the table's 4 decimals


def test_ciede2000_is_symmetric_and_zero_on_equal_colours():
    lab1, lab2 = SHARMA_2005[:, :3], SHARMA_2005[:, 3:6]
    np.testing.assert_allclose(ciede2000(lab2, lab1), ciede2000(lab1, lab2), rtol=0, atol=1e-12)
    assert np.all(ciede2000(lab1, lab1) == 0.0)
    assert ciede2000([50.0, 0.0, 0.0], [50.0, 0.0, 0.0]).shape == ()  # one pair -> a scalar


def test_srgb_to_lab_known_colours():
    rgb = np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]], np.uint8)
    expected = [
        [100.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [53.2408, 80.0925, 67.2032],
        [87.7347, -86.1827, 83.1793],
        [32.2970, 79.1875, -107.8602],
        [53.5850, 0.0, 0.0],
    ]
    np.testing.assert_allclose(srgb_to_lab(rgb), expected, atol=2e-3)


def test_srgb_to_lab_agrees_with_scikit_image():
    from skimage.color import rgb2lab

    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    # scikit-image rounds the sRGB matrix to 6 digits: agreement to 0.01 of a CIELAB unit
    np.testing.assert_allclose(srgb_to_lab(rgb), rgb2lab(rgb, illuminant="D65"), atol=1e-2)


def test_garment_colour_error_over_the_ground_truths_garment_pixels():
    truth = np.full((8, 6, 3), 255, np.uint8)
    truth[2:6, 1:5] = [200, 30, 40]
    assert garment_pixels(truth).sum() == 16
    assert garment_colour_error(truth, truth) == 0.0
    out = truth.copy()
    out[:2] = [0, 0, 255]  # changes outside the garment do not count
    assert garment_colour_error(out, truth) == 0.0
    out[2:6, 1:5] = [30, 200, 40]
    expected = ciede2000(srgb_to_lab(np.uint8([30, 200, 40])), srgb_to_lab(np.uint8([200, 30, 40])))
    assert garment_colour_error(out, truth) == pytest.approx(float(expected), abs=1e-9)
    assert np.isnan(garment_colour_error(out, np.full_like(truth, 250)))  # all white: no garment


def test_overlap_colour_error_tells_a_wrong_shape_from_a_wrong_colour():
    truth = np.full((8, 6, 3), 255, np.uint8)
    truth[2:6, 1:5] = [200, 30, 40]
    half = np.full_like(truth, 255)
    half[2:4, 1:5] = [200, 30, 40]  # the right colour, half the garment drawn
    assert garment_colour_error(half, truth) > 10  # white inside the true outline counts
    assert overlap_colour_error(half, truth) == 0.0
    recoloured = truth.copy()
    recoloured[2:6, 1:5] = [30, 200, 40]
    assert overlap_colour_error(recoloured, truth) == pytest.approx(garment_colour_error(recoloured, truth))
    assert np.isnan(overlap_colour_error(np.full_like(truth, 255), truth))  # nothing drawn: no overlap
    with pytest.raises(ValueError, match=r"output \(4, 3, 3\) and ground truth \(8, 6, 3\) must both be"):
        overlap_colour_error(truth[:4, :3], truth)


def test_colour_error_names_bad_input():
    truth = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"output: expected uint8 RGB values of shape \(\.\.\., 3\), got float64"):
        garment_colour_error(truth.astype(np.float64), truth)
    with pytest.raises(ValueError, match=r"output \(4, 3, 3\) and ground truth \(4, 4, 3\) must both be"):
        garment_colour_error(truth[:, :3], truth)
