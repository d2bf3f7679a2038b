"""Numbers at the edge of their range, every PIL mode, and non-finite values inside the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from igr_sdk import EngineError, InputError, NonFiniteError, Restorer
from igr_sdk._manifest import read_constants
from igr_sdk._preprocess import load_mask, load_rgb, prepare
from igr_sdk._scheduler import alphas_cumprod, ddim_timesteps, max_steps


@pytest.fixture(scope="module")
def restorer(tiny_engines):
    return Restorer.from_dir(tiny_engines, backend="onnxruntime")


# --- class 3: numeric arguments ------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 1, 2, 5, 37])
@pytest.mark.parametrize("total", [1000, 999, 64, 7])
def test_largest_step_count_stays_inside_the_schedule(total, offset):
    if offset >= total:
        pytest.skip("offset past the schedule")
    n = max_steps(total, offset)
    assert n >= 1
    assert ddim_timesteps(n, total, offset).max() < total
    assert len(alphas_cumprod(num_train_timesteps=total)[ddim_timesteps(n, total, offset)]) == n
    with pytest.raises(InputError, match=rf"steps must be at most {n} for a {total}-step schedule"):
        ddim_timesteps(n + 1, total, offset)


@pytest.mark.parametrize("total", [1000, 999, 64, 7])
def test_trailing_spacing_allows_every_timestep_once(total):
    assert max_steps(total, 1, "trailing") == total
    assert ddim_timesteps(total, total, 1, "trailing").tolist() == list(range(total - 1, -1, -1))
    with pytest.raises(InputError, match=rf"steps must be at most {total} for a {total}-step schedule with 'trailing'"):
        ddim_timesteps(total + 1, total, 1, "trailing")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"steps": 1000},
            r"steps must be at most 999 for a 1000-step schedule with 'leading' spacing and steps_offset 1, got 1000",
        ),
        ({"steps": 10**12}, r"steps must be at most 999"),
        ({"steps": np.int64(0)}, r"steps must be an integer >= 1, got np.int64\(0\)"),
        ({"steps": 2.0}, r"steps must be an integer >= 1, got 2.0"),
        ({"steps": "3"}, r"steps must be an integer >= 1, got '3'"),
        ({"guidance_scale": -0.5}, r"guidance_scale must be between 0 and 50, got -0.5"),
        ({"guidance_scale": 1e30}, r"guidance_scale must be between 0 and 50, got 1e\+30"),
        ({"guidance_scale": np.float32(np.inf)}, r"guidance_scale must be a finite number, got np.float32\(inf\)"),
        ({"guidance_scale": "1.5"}, r"guidance_scale must be a finite number, got '1.5'"),
        ({"guidance_scale": True}, r"guidance_scale must be a finite number, got True"),
        ({"guidance_scale": None}, r"guidance_scale must be a finite number, got None"),
        ({"seed": 2**64}, r"seed must be at most 2\*\*64 - 1, got 18446744073709551616"),
        ({"seed": np.int8(-3)}, r"seed must be a non-negative integer, got np.int8\(-3\)"),
        ({"seed": 1.5}, r"seed must be a non-negative integer, got 1.5"),
        ({"seed": np.bool_(True)}, r"seed must be a non-negative integer, got np.True_"),
        ({"seed": [1, -2]}, r"got 1 person images but 2 seeds"),
        ({"category": np.float64(1.0)}, r"unknown category np.float64\(1.0\)"),
    ],
)
def test_numbers_out_of_range_are_named(restorer, person_and_mask, kwargs, message):
    person, mask = person_and_mask
    with pytest.raises(InputError, match=message):
        restorer.restore(person, mask, **{"steps": 1, **kwargs})


def test_numpy_scalars_are_numbers(restorer, person_and_mask):
    person, mask = person_and_mask
    plain = restorer.restore(person, mask, steps=2, guidance_scale=2.0, seed=3)
    same = restorer.restore(person, mask, steps=np.int64(2), guidance_scale=np.float32(2.0), seed=np.uint32(3))
    assert same.seeds == (3,) and type(same.seeds[0]) is int
    assert np.array_equal(np.asarray(plain.image), np.asarray(same.image))
    edge = restorer.restore(person, mask, steps=1, guidance_scale=np.float16(0.0), seed=2**64 - 1)
    assert edge.seeds == (2**64 - 1,)


@pytest.mark.parametrize(
    ("threads", "message"),
    [(0, "threads must be an integer between 1 and 1024, got 0"), (2.0, "got 2.0"), (True, "got True")],
)
def test_thread_count_is_checked(tiny_engines, threads, message):
    with pytest.raises(InputError, match=message):
        Restorer.from_dir(tiny_engines, backend="onnxruntime", threads=threads)


def test_numpy_thread_count_and_malformed_device(tiny_engines):
    assert Restorer.from_dir(tiny_engines, backend="onnxruntime", threads=np.int32(1)).backend
    with pytest.raises(EngineError, match="unknown device 'cuda:x' for onnxruntime"):
        Restorer.from_dir(tiny_engines, backend="onnxruntime", device="cuda:x")


# --- class 4: every PIL mode ---------------------------------------------------------------------
MODES = [*Image.MODES, "La"]
GREY_MODES = ("L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _in_mode(rgb: np.ndarray, mode: str) -> Image.Image:
    img = Image.fromarray(rgb)
    grey = np.asarray(img.convert("L"))
    if mode in ("La", "RGBa"):
        return img.convert("LA" if mode == "La" else "RGBA").convert(mode)
    if mode.startswith("I;16"):  # Pillow's own conversion to these modes clips at 255
        order = ">" if mode == "I;16B" else "<"
        data = (grey.astype(np.uint16) * 257).astype(f"{order}u2").tobytes()
        return Image.frombytes(mode, img.size, data)
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) / 255.0)
    return img.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_is_converted_or_refused(person_and_mask, mode, tmp_path):
    person, mask = person_and_mask
    img = _in_mode(person, mode)
    assert img.mode == mode
    rgb = load_rgb(img).astype(np.int16)
    assert rgb.shape == (*person.shape[:2], 3)
    if mode in GREY_MODES:
        grey = np.asarray(Image.fromarray(person).convert("L"), dtype=np.int16)
        assert np.abs(rgb - grey[..., None]).max() <= 1
    elif mode not in ("1", "P", "PA"):  # dithered or quantised: only the shape is comparable
        assert np.abs(rgb - person).max() <= 8
    m = _in_mode(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2), mode)
    got = load_mask(m)
    assert got.shape == mask.shape
    assert (got == mask).mean() > 0.99, mode
    prepare(img, m, 64, 48, 8)


@pytest.mark.parametrize("fmt", ["png", "tiff", "webp", "bmp", "gif", "jpeg"])
def test_modes_saved_to_files(person_and_mask, tmp_path, fmt):
    person, _ = person_and_mask
    for mode in MODES:
        path = tmp_path / f"{mode.replace(';', '_')}.{fmt}"
        try:
            _in_mode(person, mode).save(path)
        except (OSError, ValueError, KeyError):
            continue  # Pillow cannot write this mode in this format
        try:
            rgb = load_rgb(path)
        except InputError:
            continue
        assert rgb.shape == (*person.shape[:2], 3), (mode, fmt)


@pytest.mark.parametrize(
    ("arr", "mode"),
    [
        (lambda m: m.astype(np.uint8), "L"),
        (lambda m: m.astype(np.uint16), "I;16"),
        (lambda m: m.astype(np.int32), "I"),
        (lambda m: m.astype(np.float32), "F"),
        (lambda m: np.repeat(m.astype(np.uint8)[..., None], 3, axis=2), "RGB"),
    ],
)
def test_mask_image_with_values_0_and_1_is_a_mask(person_and_mask, tmp_path, arr, mode):
    _, mask = person_and_mask
    img = Image.fromarray(arr(mask))
    assert img.mode == mode
    assert np.array_equal(load_mask(img), mask)
    if mode in ("L", "I;16", "RGB"):
        img.save(tmp_path / "m.png")
        assert np.array_equal(load_mask(tmp_path / "m.png"), mask)


def test_sixteen_bit_and_float_images_are_scaled(person_and_mask):
    person, _ = person_and_mask
    grey = person[..., 1]
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
    assert np.array_equal(load_rgb(sixteen)[..., 0], grey)
    assert np.array_equal(load_rgb(Image.fromarray(grey.astype(np.int32) * 257))[..., 0], grey)
    assert np.array_equal(load_rgb(Image.fromarray(grey.astype(np.int32)))[..., 0], grey)
    assert np.array_equal(load_rgb(grey.astype(np.uint16) * 257)[..., 0], grey)
    assert np.abs(load_rgb(Image.fromarray(grey.astype(np.float32) / 255))[..., 0].astype(int) - grey).max() <= 1
    ringing = Image.fromarray(grey.astype(np.float32) / 255).resize((45, 60), Image.BICUBIC)
    assert load_rgb(ringing).shape == (60, 45, 3)


@pytest.mark.parametrize(
    ("img", "message"),
    [
        (
            Image.fromarray(np.full((40, 30), -5, np.int32)),
            r"PIL mode 'I' values span \[-5, -5\], expected grey levels",
        ),
        (Image.fromarray(np.full((40, 30), 70000, np.int32)), r"values span \[70000, 70000\]"),
        (Image.fromarray(np.full((40, 30), np.nan, np.float32)), r"PIL mode 'F' image contains NaN"),
        (Image.fromarray(np.full((40, 30), 1e6, np.float32)), r"expected grey levels in \[0, 65535\]"),
        (np.zeros((40, 30, 3), np.int32), r"array dtype int32 is not uint8, uint16 or float"),
    ],
)
def test_images_out_of_range_are_refused(img, message):
    with pytest.raises(InputError, match=message):
        load_rgb(img)
    if isinstance(img, Image.Image):
        with pytest.raises(InputError, match=message):
            load_mask(img)


def test_mask_array_of_another_kind():
    with pytest.raises(InputError, match="array dtype object is not bool, integer or float"):
        load_mask(np.full((40, 30), None, object))


def test_directory_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="is a directory, expected an image file"):
        load_rgb(tmp_path)
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(InputError, match="x.png"):
        load_rgb(tmp_path / "x.png")


# --- class 5: non-finite values name their stage -------------------------------------------------
class Poisoned:
    """The real backend, with one output of one graph replaced by ``value`` (NaN, inf or a huge number)."""

    def __init__(self, backend, graph: str, output: str, value: float):
        self.inner, self.graph, self.output, self.value = backend, graph, output, value
        self.name = backend.name
        self.reentrant = True

    def run(self, graph, feeds):
        out = self.inner.run(graph, feeds)
        if graph == self.graph:
            out[self.output] = np.full_like(self.inner.to_host(out[self.output]), self.value)
        return out

    def to_host(self, x):
        return self.inner.to_host(x)

    def input_dtype(self, graph, name):
        return self.inner.input_dtype(graph, name)


@pytest.mark.parametrize(
    ("graph", "output", "value", "message"),
    [
        ("image_encoder", "ip_tokens", np.nan, r"image_encoder produced 128 NaN or infinite values in ip_tokens"),
        ("vae_encoder", "latent", np.inf, r"vae_encoder produced 192 NaN or infinite values in latent"),
        ("garmnet", "ref_v_1", np.nan, r"garmnet produced 768 NaN or infinite values in ref_v_1"),
        ("denoiser", "noise_pred", -np.inf, r"denoiser produced 384 NaN .* noise_pred at step 1/3 \(timestep 667\)"),
        ("denoiser", "noise_pred", 3e38, r"DDIM update produced .* after step 1/3 .*guidance_scale 1.5"),
        ("vae_decoder", "image", np.nan, r"vae_decoder produced 9216 NaN or infinite values in image"),
    ],
)
def test_non_finite_values_name_the_stage(restorer, person_and_mask, graph, output, value, message):
    person, mask = person_and_mask
    backend = Poisoned(restorer.backend, graph, output, value)
    poisoned = Restorer(restorer.manifest, backend, read_constants(restorer.manifest))
    with np.errstate(all="ignore"), pytest.raises(NonFiniteError, match=message):
        poisoned.restore(person, mask, steps=3, seed=0)


def test_largest_guidance_stays_finite_or_is_named(restorer, person_and_mask):
    person, mask = person_and_mask
    try:
        out = restorer.restore(person, mask, steps=3, seed=0, guidance_scale=50)
    except NonFiniteError as e:
        assert "guidance_scale 50" in str(e)
    else:
        assert np.asarray(out.image).std() >= 0
