"""Readers: synthetic (VITON-HD layout + metadata), VITON-HD with parse maps, DressCode, and bad data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.datasets import (
    DataError,
    DressCodeDataset,
    Sample,
    VitonHDDataset,
    open_dataset,
    read_name_list,
)
from train.synthetic import CATEGORIES, generate, make_pair, pair_seed

H, W = 64, 48


def _rgb(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return a


def _labels(path: Path, labels: np.ndarray) -> None:
    """A palette (mode P) label map, as VITON-HD and DressCode ship them."""
    im = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 31 % 256, i * 59 % 256)])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _label_map(values: dict[int, tuple[slice, slice]]) -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    for v, (ys, xs) in values.items():
        lab[ys, xs] = v
    return lab


@pytest.fixture
def synthetic(tmp_path):
    generate(tmp_path / "syn", 6, seed=0)
    return tmp_path / "syn"


@pytest.fixture
def viton(tmp_path):
    """VITON-HD: root/train/{image,cloth,image-parse-v3}, root/train_pairs.txt (unpaired 2nd column)."""
    root = tmp_path / "viton"
    for k, stem in enumerate(["00001_00", "00002_00", "00003_00"]):
        _rgb(root / "train" / "image" / f"{stem}.jpg", k)
        _rgb(root / "train" / "cloth" / f"{stem}.jpg", 10 + k)
        # upper-clothes (5) and coat (7) are the garment; face (13), pants (9), arms (14) are not
        lab = _label_map(
            {
                5: (slice(10, 30), slice(10, 30)),
                7: (slice(30, 34), slice(10, 30)),
                13: (slice(0, 8), slice(18, 28)),
                9: (slice(40, 60), slice(12, 36)),
                14: (slice(12, 30), slice(4, 10)),
            }
        )
        _labels(root / "train" / "image-parse-v3" / f"{stem}.png", lab)
    (root / "train_pairs.txt").write_text(
        "00001_00.jpg 00003_00.jpg\n00002_00.jpg 00001_00.jpg\n00003_00.jpg 00002_00.jpg\n"
    )
    return root


@pytest.fixture
def dresscode(tmp_path):
    root = tmp_path / "dc"
    specs = {"upper_body": ("000001", 4), "lower_body": ("010001", 6), "dresses": ("020001", 7)}
    for k, (sub, (pid, label)) in enumerate(specs.items()):
        _rgb(root / sub / "images" / f"{pid}_0.jpg", k)
        _rgb(root / sub / "images" / f"{pid}_1.jpg", 20 + k)
        # skirt (5) inside the lower-body map too, hair (2) everywhere
        lab = _label_map(
            {
                label: (slice(20, 40), slice(10, 30)),
                2: (slice(0, 6), slice(0, W)),
                **({5: (slice(40, 44), slice(10, 30))} if sub == "lower_body" else {}),
            }
        )
        _labels(root / sub / "label_maps" / f"{pid}_4.png", lab)
        (root / sub / "train_pairs.txt").write_text(f"{pid}_0.jpg {pid}_1.jpg\n")
    return root


def test_synthetic_folder_items_match_the_generator(synthetic):
    ds = open_dataset(synthetic)
    assert isinstance(ds, VitonHDDataset)
    assert len(ds) == 6 and ds.problems == []
    assert ds.names == tuple(f"{i:05d}_00" for i in range(6))
    for i in range(6):
        s = ds[i]
        ref = make_pair(pair_seed(0, i), category=CATEGORIES[i % 3], hard_rate=0.25)
        assert isinstance(s, Sample) and s.name == f"{i:05d}_00"
        assert s.category == ref.category == CATEGORIES[i % 3]
        assert s.person.shape == (256, 192, 3) and s.person.dtype == np.uint8
        assert s.garment.shape == (256, 192, 3) and s.garment.dtype == np.uint8
        assert s.mask.shape == (256, 192) and s.mask.dtype == bool
        assert np.array_equal(s.mask, ref.mask)  # PNG is lossless
        assert np.abs(s.person.astype(int) - ref.person).mean() < 4  # JPEG q95: about 3 levels
        assert ds.metadata(i)["flags"] == list(ref.flags)
    assert ds[-1].name == "00005_00"
    with pytest.raises(IndexError):
        ds[6]


def test_synthetic_folder_under_a_split(tmp_path):
    generate(tmp_path / "root" / "test", 3, seed=2)
    ds = VitonHDDataset(tmp_path / "root", split="test")
    assert len(ds) == 3 and [ds[i].category for i in range(3)] == list(CATEGORIES)


def test_viton_parse_maps_give_upper_masks(viton):
    ds = open_dataset(viton)
    assert isinstance(ds, VitonHDDataset) and len(ds) == 3
    assert ds.names == ("00001_00", "00002_00", "00003_00")
    s = ds[1]
    assert s.category == "upper"
    expected = np.zeros((H, W), bool)
    expected[10:34, 10:30] = True  # labels 5 and 7 only
    assert np.array_equal(s.mask, expected)
    # paired mode: the person's own garment, whatever the pairs file's second column says
    assert np.array_equal(s.garment, np.asarray(Image.open(viton / "train" / "cloth" / "00002_00.jpg")))
    assert ds.metadata(1) is None


def test_agnostic_mask_is_preferred_and_png_persons_are_found(viton):
    m = np.zeros((H, W), np.uint8)
    m[5:15, 5:15] = 255
    (viton / "train" / "agnostic-mask").mkdir()
    Image.fromarray(m).save(viton / "train" / "agnostic-mask" / "00003_00_mask.png")
    img = viton / "train" / "image"
    (img / "00003_00.jpg").rename(img / "00003_00.png")  # any of .jpg/.jpeg/.png by stem
    ds = VitonHDDataset(viton)
    s = ds[ds.index_of("00003_00")]
    assert s.mask.sum() == 100 and s.mask[5:15, 5:15].all()
    assert ds.entries[2].person.suffix == ".png"


def test_dresscode_categories_and_masks(dresscode):
    ds = open_dataset(dresscode)
    assert isinstance(ds, DressCodeDataset)
    assert ds.names == ("upper_body/000001_0", "lower_body/010001_0", "dresses/020001_0")
    cats = [ds[i].category for i in range(3)]
    assert cats == ["upper", "lower", "full"]
    up, low, dress = ds[0], ds[1], ds[2]
    assert up.mask.sum() == 20 * 20 and dress.mask.sum() == 20 * 20
    assert low.mask.sum() == 24 * 20  # pants (6) and skirt (5)
    assert not up.mask[:6].any()  # hair is not garment
    assert up.person.shape == (H, W, 3) and up.garment.dtype == np.uint8
    only = DressCodeDataset(dresscode, categories=["lower"])
    assert only.names == ("lower_body/010001_0",)
    picked = DressCodeDataset(dresscode, names=["dresses/020001_0", "dresses/999999_0"])
    assert picked.names == ("dresses/020001_0",)
    assert [(p.name, p.reason) for p in picked.problems] == [
        ("dresses/999999_0", "requested name not in the pairs list")
    ]


def test_dresscode_masks_folder_wins(dresscode):
    m = np.zeros((H, W), np.uint8)
    m[:3] = 255
    (dresscode / "dresses" / "masks").mkdir()
    Image.fromarray(m).save(dresscode / "dresses" / "masks" / "020001_0.png")
    ds = DressCodeDataset(dresscode, categories=["dresses"])
    assert ds[0].mask.sum() == 3 * W


def test_missing_garment_is_reported_with_its_path(synthetic, caplog):
    missing = synthetic / "cloth" / "00002_00.jpg"
    missing.unlink()
    with caplog.at_level(logging.WARNING, logger="train.datasets"):
        ds = VitonHDDataset(synthetic)
    assert len(ds) == 5 and "00002_00" not in ds.names
    assert ds.problem_count == 1
    (p,) = ds.problems
    assert p.name == "00002_00" and p.path == missing and "garment" in p.reason
    assert str(missing) in caplog.text


def test_missing_dresscode_files_are_counted(dresscode, caplog):
    (dresscode / "upper_body" / "images" / "000001_1.jpg").unlink()
    (dresscode / "lower_body" / "label_maps" / "010001_4.png").unlink()
    with caplog.at_level(logging.WARNING, logger="train.datasets"):
        ds = DressCodeDataset(dresscode)
    assert ds.names == ("dresses/020001_0",)
    assert sorted(p.path.name for p in ds.problems) == ["000001_1.jpg", "010001_4.png"]
    assert "000001_1.jpg" in caplog.text and "010001_4.png" in caplog.text


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_raises_naming_the_file(synthetic, damage):
    bad = synthetic / "image" / "00001_00.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 3])
    ds = VitonHDDataset(synthetic)  # indexing only checks that files exist
    assert len(ds) == 6
    with pytest.raises(DataError, match="00001_00.jpg"):
        ds[1]
    assert ds[0].name == "00000_00"  # the others still read


def test_missing_root_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        open_dataset(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value) and "VITON-HD layout" in str(err.value)
    with pytest.raises(DataError, match="image/ and cloth/"):
        VitonHDDataset(tmp_path)
    (tmp_path / "image").mkdir()
    (tmp_path / "cloth").mkdir()
    with pytest.raises(DataError, match="no usable pairs") as err:
        open_dataset(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="upper_body"):
        DressCodeDataset(tmp_path)


def test_only_broken_pairs_is_an_error_that_names_a_problem(synthetic):
    for p in (synthetic / "agnostic-mask").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="6 problems.*missing mask"):
        VitonHDDataset(synthetic)


def test_oversized_image_is_refused_before_decoding(synthetic):
    ds = VitonHDDataset(synthetic, max_pixels=10_000)  # 256x192 = 49152 pixels
    with pytest.raises(DataError, match=r"256 = 0\.0 MP; the limit"):
        ds.load_person(0)


def test_rgb_label_map_is_refused(viton):
    path = viton / "train" / "image-parse-v3" / "00001_00.png"
    Image.open(path).convert("RGB").save(path)
    ds = VitonHDDataset(viton)
    with pytest.raises(DataError, match="00001_00.png has mode RGB"):
        ds[0]


def test_mask_size_mismatch_and_resizing(viton):
    _rgb(viton / "train" / "image" / "00001_00.jpg", 0, size=(80, 60))
    with pytest.raises(DataError, match="expected the same size"):
        VitonHDDataset(viton)[0]
    s = VitonHDDataset(viton, size=(32, 24))[0]
    assert s.person.shape == (32, 24, 3) and s.garment.shape == (32, 24, 3) and s.mask.shape == (32, 24)
    assert s.mask.dtype == bool and s.mask[5:17, 5:15].all()


def test_name_filter_and_list_file(synthetic, tmp_path):
    lst = tmp_path / "keep.txt"
    lst.write_text("# curated\n00003_00\n00001_00\nnot_there\n\n")
    names = read_name_list(lst)
    assert names == ["00003_00", "00001_00", "not_there"]
    ds = VitonHDDataset(synthetic, names=names)
    assert ds.names == ("00001_00", "00003_00")
    assert [p.name for p in ds.problems] == ["not_there"]


def test_bad_metadata_line_is_a_problem(synthetic):
    meta = synthetic / "metadata.jsonl"
    meta.write_text(meta.read_text() + "{broken\n")
    ds = VitonHDDataset(synthetic)
    assert len(ds) == 6
    assert len(ds.problems) == 1 and str(ds.problems[0].path).endswith("metadata.jsonl:7")
