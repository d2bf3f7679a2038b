"""Input checks and preprocessing shared by the runtime and the reference pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from igr_sdk import InputError
from igr_sdk._preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    fit,
    garment_crop,
    load_mask,
    load_rgb,
    mask_to_latent,
    prepare,
)


def test_fit_keeps_proportions_and_pads_white():
    rgb = np.zeros((100, 100, 3), np.uint8)
    mask = np.ones((100, 100), bool)
    out, m = fit(rgb, mask, 64, 48)
    assert out.shape == (64, 48, 3)
    # a square scaled into 64x48 becomes 48x48, centred with 8 white rows above and below
    assert (out[:8] == 255).all() and (out[-8:] == 255).all() and (out[8:56] == 0).all()
    assert m[8:56].all() and not m[:8].any() and not m[56:].any()


def test_mask_to_latent_is_the_cell_fraction():
    m = np.zeros((16, 16), bool)
    m[:8, :4] = True
    lat = mask_to_latent(m, 8)
    assert lat.shape == (1, 2, 2) and lat.tolist() == [[[0.5, 0.0], [0.0, 0.0]]]


def test_garment_crop_is_the_masked_bounding_box_on_black():
    rgb = np.full((40, 40, 3), 255, np.uint8)
    rgb[10:30, 10:20] = (255, 0, 0)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:20] = True
    crop = garment_crop(rgb, mask)
    assert crop.shape == (3, 224, 224)
    pixels = crop.transpose(1, 2, 0) * CLIP_STD + CLIP_MEAN  # back to [0, 1]
    np.testing.assert_allclose(pixels[112, 112], [1.0, 0.0, 0.0], atol=1e-5)  # red garment centred
    np.testing.assert_allclose(pixels[112, 5], [0.0, 0.0, 0.0], atol=1e-5)  # black side padding


def test_inputs_in_every_form_agree(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (60, 45, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    rgba = np.dstack([rgb, np.full((60, 45), 255, np.uint8)])
    for x in (
        tmp_path / "p.png",
        str(tmp_path / "p.png"),
        Image.fromarray(rgb),
        rgb,
        rgba,
        rgb.astype(np.float32) / 255.0,
    ):
        assert np.array_equal(load_rgb(x), rgb)
    grey = load_rgb(rgb[:, :, 0])
    assert grey.shape == (60, 45, 3) and np.array_equal(grey[:, :, 2], rgb[:, :, 0])


def test_exif_rotation_is_applied(tmp_path):
    rgb = np.zeros((30, 60, 3), np.uint8)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").shape == (60, 30, 3)


def test_mask_forms():
    m = np.zeros((20, 20), bool)
    m[5:10, 5:10] = True
    for x in (
        m,
        m.astype(np.uint8),
        m.astype(np.uint8) * 255,
        m.astype(np.float32),
        Image.fromarray(m.astype(np.uint8) * 255),
    ):
        assert np.array_equal(load_mask(x), m)
    with pytest.raises(InputError, match=r"array values \[0, 3, 7\] are not a 0/1"):
        load_mask(np.array([[0, 3], [7, 0]] * 10, np.uint8).repeat(10, 1))


@pytest.mark.parametrize(
    ("person", "message"),
    [
        (np.zeros((1, 1, 3), np.uint8), "1x1 pixels is too small"),
        (np.full((40, 40, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((40, 40, 3), 2.0, np.float32), r"float array values span \[2, 2\], expected \[0, 1\]"),
        (np.zeros((40, 40, 5), np.uint8), r"array of shape \(40, 40, 5\)"),
        ("a string that is not a file", "does not exist"),
        (12, "expected a path, a PIL image or a numpy array, got int"),
    ],
)
def test_bad_person_images(person, message):
    with pytest.raises(InputError, match=message):
        prepare(person, np.ones((40, 40), bool), 64, 48, 8)


def test_huge_images_are_refused_before_decoding(tmp_path):
    # a PNG header declaring 10000 x 10000 pixels: refused from the header, never decoded
    Image.new("1", (10000, 10000)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="10000x10000 pixels is over the limit"):
        load_rgb(tmp_path / "big.png")


def test_truncated_file(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.jpg' (could not be decoded|is not a readable image)"):
        load_rgb(tmp_path / "t.jpg")


def test_mask_that_vanishes_when_resized():
    m = np.zeros((4000, 3000), bool)
    m[100, 100] = True  # one pixel of 12 megapixels
    with pytest.raises(InputError, match="covers nothing of the person image once resized to 64x48"):
        prepare(np.zeros((4000, 3000, 3), np.uint8), m, 64, 48, 8)
