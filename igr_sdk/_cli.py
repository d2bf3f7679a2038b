"""``igr-restore``: restore garments from person photos on the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from igr_sdk._errors import EngineError, InputError
from igr_sdk._outputs import (
    check_writable_file,
    files_in_folder,
    is_image_path,
    refuse_inside,
    refuse_overwriting,
    write_image,
)
from igr_sdk._preprocess import check_count, check_guidance, check_seed, load_rgb


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="igr-restore",
        description="Restore the in-shop image of the garment each person wears.",
        epilog="Example: igr-restore person.jpg --mask mask.png --category upper --engines engines/ --out garment.png "
        "(without --mask, the engine folder's parser finds the garment)",
    )
    ap.add_argument("persons", nargs="*", type=Path, help="person photo(s)")
    ap.add_argument(
        "--mask",
        nargs="+",
        type=Path,
        default=[],
        help="garment mask(s), one per person; without, the engine folder's parser finds the garment",
    )
    ap.add_argument(
        "--save-mask",
        type=Path,
        metavar="PATH_OR_DIR",
        help="also write the mask used: an image path for one person, else a folder (<person>_mask.png each)",
    )
    ap.add_argument(
        "--examples",
        action="store_true",
        help="restore the examples bundled with the model (from the photo alone when it has a parser); --out is "
        "a folder that also gets sheet.png (person | mask | restored | ground truth)",
    )
    ap.add_argument("--category", nargs="+", default=["upper"], help="upper, lower or full; one, or one per person")
    ap.add_argument("--engines", type=Path, help="engine directory (default: the bundled model)")
    ap.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output image for one person, or a folder (one <person>.png each) for several",
    )
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    ap.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale (default 1.5)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    ap.add_argument("--backend", default="auto", help="auto, onnxruntime or tensorrt")
    ap.add_argument("--device", help="cpu, cuda or cuda:N (default: the best available)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return ap


def _outputs(persons: list[Path], out: Path) -> list[Path]:
    """Where each restored image goes; every path checked before any inference."""
    if len(persons) == 1 and is_image_path(out):
        check_writable_file(out)
        return [out]
    if is_image_path(out):
        raise InputError(f"--out {str(out)!r} is one image but {len(persons)} persons were given; pass a folder")
    names = [f"{p.stem}.png" for p in persons]
    if len({n.lower() for n in names}) != len(names):
        raise InputError("persons share a file name; restore them in separate calls or rename them")
    return files_in_folder(out, names)


def _mask_outputs(persons: list[Path], save_mask: Path | None, outs: list[Path]) -> list[Path]:
    """Where each mask used goes (none without --save-mask), checked like --out and apart from it."""
    if save_mask is None:
        return []
    if len(persons) == 1 and is_image_path(save_mask):
        check_writable_file(save_mask, "--save-mask")
        paths = [save_mask]
    elif is_image_path(save_mask):
        raise InputError(
            f"--save-mask {str(save_mask)!r} is one image but {len(persons)} persons were given; pass a folder"
        )
    else:
        paths = files_in_folder(save_mask, [f"{p.stem}_mask.png" for p in persons])
    clash = {q.resolve() for q in paths} & {q.resolve() for q in outs}
    if clash:
        raise InputError(f"--save-mask and --out both name {sorted(map(str, clash))}; choose different paths")
    return paths


def _check_numbers(args) -> None:
    """The numeric options, before the engines load (steps' upper bound depends on the engines)."""
    check_count(args.steps, "--steps", 1)
    check_guidance(args.guidance)
    check_seed(args.seed)


def _bar(quiet: bool):
    start = time.perf_counter()

    def show(done: int, total: int) -> None:
        if quiet:
            return
        filled = int(30 * done / total)
        rate = done / max(time.perf_counter() - start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} steps, {rate:.1f} it/s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _examples(args, restorer_cls) -> int:
    """Restore the examples shipped beside the engines and write a side-by-side sheet."""
    from PIL import Image

    from igr_sdk._default import default_engine_dir
    from igr_sdk._examples import read_examples
    from igr_sdk._manifest import read_manifest

    engines = args.engines or default_engine_dir()
    manifest = read_manifest(engines)
    examples = read_examples(manifest)
    parsed = "parser" in manifest.raw  # the photo alone: the parser finds each garment
    refuse_inside(args.out, engines, "the engine directory")
    outs = files_in_folder(args.out, [*(f"{e.name}.png" for e in examples), "sheet.png"])
    mask_outs = _mask_outputs([Path(e.name) for e in examples], args.save_mask, outs)
    if mask_outs:
        refuse_inside(args.save_mask, engines, "the engine directory")
    inputs = [p for e in examples for p in (e.person, e.mask, e.ground_truth) if p is not None]
    refuse_overwriting([*outs, *mask_outs], inputs)
    restorer = restorer_cls.from_dir(engines, backend=args.backend, device=args.device)
    result = restorer.restore(
        [str(e.person) for e in examples],
        None if parsed else [str(e.mask) for e in examples],
        [e.category for e in examples],
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        progress=_bar(args.quiet),
    )
    rows = []
    for m, path in zip(result.masks, mask_outs):
        write_image(m, path)
    for e, img, m, path in zip(examples, result.images, result.masks, outs):
        write_image(img, path)
        row = [Image.fromarray(load_rgb(e.person)), m, img]
        if e.ground_truth is not None:
            row.append(Image.fromarray(load_rgb(e.ground_truth, "ground truth")))
        rows.append(row)
    write_image(sheet(rows, img.height), outs[-1])
    if not args.quiet:
        print(
            f"wrote {len(examples)} garments and sheet.png (person | mask | restored | ground truth) to {args.out} "
            f"in {result.timings['total']:.2f} s ({restorer.backend.name}; "
            f"{'masks from the parser' if parsed else 'bundled masks'})",
            file=sys.stderr,
        )
    return 0


def sheet(rows, height: int):
    """Rows of images side by side, each scaled to ``height``, on white."""
    from PIL import Image

    scaled = [
        [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height)) for im in r] for r in rows
    ]
    width = max(sum(im.width for im in r) for r in scaled)
    out = Image.new("RGB", (width, height * len(scaled)), "white")
    for y, r in enumerate(scaled):
        x = 0
        for im in r:
            out.paste(im, (x, y * height))
            x += im.width
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from igr_sdk._restorer import Restorer

    try:
        _check_numbers(args)
        if args.examples:
            return _examples(args, Restorer)
        if not args.persons:
            raise InputError("no person image given (or pass --examples)")
        if args.mask and len(args.mask) != len(args.persons):
            raise InputError(
                f"got {len(args.persons)} persons but {len(args.mask)} masks; give one mask per person "
                "(or none: the parser finds the garments)"
            )
        if len(args.category) not in (1, len(args.persons)):
            raise InputError(f"got {len(args.category)} categories for {len(args.persons)} persons")
        outs = _outputs(args.persons, args.out)
        mask_outs = _mask_outputs(args.persons, args.save_mask, outs)
        refuse_overwriting([*outs, *mask_outs], [*args.persons, *args.mask])
        restorer = Restorer.from_dir(args.engines, backend=args.backend, device=args.device)
        cats = args.category if len(args.category) > 1 else args.category[0]
        result = restorer.restore(
            [str(p) for p in args.persons],
            [str(m) for m in args.mask] if args.mask else None,
            cats,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            progress=_bar(args.quiet),
        )
        for img, path in zip(result.images, outs):
            write_image(img, path)
        for m, path in zip(result.masks, mask_outs):
            write_image(m, path)
    except (InputError, EngineError) as e:
        print(f"igr-restore: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that failed after the checks (disk full, a folder removed meanwhile)
        print(f"igr-restore: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    if not args.quiet:
        t = result.timings
        print(
            f"wrote {len(outs)} image(s) to {args.out} in {t['total']:.2f} s "
            f"(denoiser {t['denoiser']:.2f} s, {restorer.backend.name})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
