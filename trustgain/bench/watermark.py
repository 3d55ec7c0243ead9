"""Benchmark area ``watermark``: the pixel mark against invisible-watermark, same images.

Protocol (../shared/BENCHMARKS.md): 512x512 images (scikit-image's bundled photos, plus every
image under ``--data``); each method marks every image; every attack of the suite is applied
with a fixed seed; thresholds are fixed once, before any attack, for FPR 1e-3. Ours marks as
the CLI and the ``watermark.pixel`` stage do (the checked embed: the strength is raised only for
an image whose mark or payload does not read back; ``--plain-embed`` for the unchecked
``pixel.embed`` of the runs before the check), and the images raised are reported.

- ours: the analytic bound of :mod:`trustgain.watermark.pixel` (p <= 1e-3), checked on
  ``clean`` unmarked crops (random size 256-512, random flips, several keys);
- dwtDct, dwtDctSvd (48-bit) and RivaGAN (32-bit): the exact binomial test on bits matching
  their message (invisible-watermark has no key), checked on the same clean crops.

Reported per method and attack: TPR with a Wilson 95% interval, bit accuracy before ECC, and
exact payload recovery among detected images; for ours also TPR at FPR 1e-6, the share of
detected images whose payload is released (BCH + keyed tag), the exactness of released
payloads, and TPR with ``require_payload`` (detected only with a verified payload); PSNR and
SSIM of the marked images; embed, checked embed (``pixel_check.embed_checked``, what the CLI
and the stage run: embed, then read the mark back) and detect time per 512x512 image with
ratios to dwtDctSvd, measured in the same process.
RivaGAN decodes in seconds on a CPU, so it runs on a subsample (``rivagan_images``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import binom, binomtest

from trustgain.bench import Row
from trustgain.errors import InputError
from trustgain.watermark import attacks, ecc, pixel
from trustgain.watermark.images import open_image
from trustgain.watermark.pixel_check import embed_checked

SIZE = 512
FPR = 1e-3
STRICT_FPR = 1e-6
_SKIMAGE = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "stereo_motorcycle",
)


def square(image: Image.Image, size: int = SIZE) -> Image.Image:
    """Resize the short side to ``size`` and centre-crop to a square, in RGB."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    x, y = (w - size) // 2, (h - size) // 2
    return image.crop((x, y, x + size, y + size))


def load_images(data: Path | None, limit: int | None) -> list[tuple[str, Image.Image]]:
    from skimage import data as skdata

    images = []
    for name in _SKIMAGE:
        try:
            array = getattr(skdata, name)()
        except Exception:
            continue
        if isinstance(array, tuple):  # stereo pairs
            array = array[0]
        images.append((f"skimage:{name}", square(Image.fromarray(array))))
    if data is None:
        return images[:limit] if limit else images
    files = sorted(
        p for p in Path(data).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
    )
    if not files:
        raise InputError(f"{data} holds no .png or .jpg images")
    yours = [(p.name, square(open_image(p))) for p in files]
    if limit:  # a quick run with --data uses the given images first
        return (yours + images)[:limit]
    return images + yours


@dataclass
class Method:
    name: str
    embed: Callable[[Image.Image, int], Image.Image]
    # returns (detected, bit accuracy or None, payload exact or None)
    detect: Callable[[Image.Image, int], tuple[bool, float | None, bool | None]]
    clean_statistic: Callable[[Image.Image], bool]


def ours(keys: list[bytes], log: list[tuple[float, bool | None]] | None = None,
         checked: bool = True, strengths: list[float] | None = None) -> Method:
    """Our mark under ``keys[0]``; ``log`` collects (p-value, released payload right or None
    when none was released) per detection, for the strict-FPR and payload rows.

    ``checked``: embed as the CLI and the ``watermark.pixel`` stage do
    (:func:`~trustgain.watermark.pixel_check.embed_checked`: the mark and its payload are read
    back, and the strength raised only where they are not found); otherwise
    :func:`pixel.embed` at the default strength (the protocol of the runs before the check).
    ``strengths`` collects the strength used per image."""
    key = keys[0]

    def payload(i: int) -> bytes:
        return int(i * 2654435761 % 2**32).to_bytes(4, "big")

    def embed(image: Image.Image, i: int) -> Image.Image:
        if checked:
            mark = embed_checked(image, key, payload(i))
            out, strength = mark.image, mark.strength
        else:
            out, strength = pixel.embed(image, key, payload(i))[0], pixel.STRENGTH
        if strengths is not None:
            strengths.append(strength)
        return out

    def detect(image: Image.Image, i: int) -> tuple[bool, float | None, bool | None]:
        d = pixel.detect(image, key, fpr=FPR)
        truth = ecc.encode_bits(key, payload(i))
        acc = None if d.code_bits is None else float(np.mean(d.code_bits == truth))
        if log is not None:
            log.append((d.p_value, None if d.payload is None else d.payload == payload(i)))
        return d.detected, acc, (d.payload == payload(i)) if d.detected else None

    def clean(image: Image.Image) -> bool:
        # one analysis for every key; the full detector only where the statistic passes
        threshold = pixel.threshold(FPR)
        zs = pixel.max_z(image, keys)
        return any(pixel.detect(image, k, fpr=FPR).detected
                   for k, z in zip(keys, zs, strict=True) if z >= threshold)

    return Method("trustgain pixel", embed, detect, clean)


def _level(fpr: float) -> str:
    return f"{fpr:.0e}".replace("e-0", "e-")


def strict_rows(name: str, log: list[tuple[float, bool | None]], exempt: bool) -> list[Row]:
    """TPR at :data:`STRICT_FPR`, payload release and exactness, and TPR with the payload
    required, from the p-values and payload outcomes of one attack's detections."""
    n = len(log)
    p = np.array([x for x, _ in log])
    released = [ok for x, ok in log if x <= FPR and ok is not None]
    rows = []
    for fpr in (STRICT_FPR,):
        k = int((p <= fpr).sum())
        lo, hi = wilson(k, n)
        rows.append(Row(f"trustgain pixel: TPR@{_level(fpr)} {name}", k / n, f"of {n}", "report",
                        None, f"95% CI {lo:.3f}-{hi:.3f}"))
    detected = int((p <= FPR).sum())
    exact = float(np.mean(released)) if released else float("nan")
    rows.append(Row(f"trustgain pixel: payload released of detected, {name}",
                    len(released) / detected if detected else float("nan"), "share", "", None,
                    f"{len(released)} of {detected}; released payloads exact {exact:.3f}"))
    rows.append(Row(f"trustgain pixel: released payloads exact, {name}", exact, "share", "1",
                    (exact == 1.0) if released else None, f"{sum(released)} of {len(released)}"))
    for fpr in (FPR, STRICT_FPR):
        k = sum(1 for x, ok in log if x <= fpr and ok is not None)
        lo, hi = wilson(k, n)
        target = ">= 0.95" if fpr == FPR and not exempt else ""
        rows.append(Row(f"trustgain pixel: TPR@{_level(fpr)} payload required, {name}", k / n,
                        f"of {n}", target, (k / n >= 0.95) if target else None,
                        f"95% CI {lo:.3f}-{hi:.3f}; detected = p <= {_level(fpr)} and the payload "
                        "verifies"))
    return rows


def peer(method: str, bits: int) -> Method:
    import cv2
    from imwatermark import WatermarkDecoder, WatermarkEncoder

    rng = np.random.default_rng(12345)
    message = rng.integers(0, 2, bits).tolist()  # one fixed public message, as deployed
    need = int(binom.isf(FPR, bits, 0.5)) + 1  # smallest k with P(K >= k) <= FPR
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", message)
    decoder = WatermarkDecoder("bits", bits)
    if method == "rivaGan":
        WatermarkEncoder.loadModel()
        WatermarkDecoder.loadModel()

    def to_bgr(image: Image.Image) -> np.ndarray:
        return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)

    def embed(image: Image.Image, i: int) -> Image.Image:
        out = encoder.encode(to_bgr(image), method)
        return Image.fromarray(cv2.cvtColor(out, cv2.COLOR_BGR2RGB))

    def matches(image: Image.Image) -> int:
        if min(image.size) < 256 and method != "rivaGan":  # the library refuses < 256
            return 0
        got = decoder.decode(to_bgr(image), method)
        return int(np.sum(np.asarray(got, dtype=int) == np.asarray(message)))

    def detect(image: Image.Image, i: int) -> tuple[bool, float | None, bool | None]:
        k = matches(image)
        return k >= need, k / bits, (k == bits) if k >= need else None

    return Method(f"invisible-watermark {method}", embed, detect, lambda im: matches(im) >= need)


def clean_crops(images: list[tuple[str, Image.Image]], n: int, seed: int = 7):
    """``n`` unmarked crops: random side 256-512, random position, random flips."""
    rng = np.random.default_rng(seed)
    for j in range(n):
        _, image = images[j % len(images)]
        side = int(rng.integers(256, SIZE + 1))
        x, y = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
        crop = image.crop((x, y, x + side, y + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        yield crop


def quality(a: Image.Image, b: Image.Image) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x, y = np.asarray(a), np.asarray(b)
    return (
        float(peak_signal_noise_ratio(x, y, data_range=255)),
        float(structural_similarity(x, y, channel_axis=2, data_range=255)),
    )


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _time(fn: Callable[[], object], repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000.0


def run(quick: bool = False, device: str = "cpu", data: Path | None = None,
        peers: bool = True, checked: bool = True) -> list[Row]:
    """All figures; ``peers=False`` leaves invisible-watermark out (development runs);
    ``checked=False`` marks with the unchecked :func:`pixel.embed` (see :func:`ours`)."""
    del device  # CPU only: these marks run on the CPU
    images = load_images(data, 4 if quick else None)
    keys = [bytes([k]) * 32 for k in (1, 2, 3)][: 2 if quick else 3]
    n_clean = 30 if quick else 1000
    rivagan_images = 1 if quick else 10
    suite = {
        k: v
        for k, v in attacks.SUITE.items()
        if not quick or k in ("none", "jpeg50", "crop_random_50", "rotate5", "resize0.5_kept")
    }
    log: list[tuple[float, bool | None]] = []
    strengths: list[float] = []
    methods = [ours(keys, log, checked, strengths)]
    if peers:
        methods += [peer("dwtDct", 48), peer("dwtDctSvd", 48), peer("rivaGan", 32)]
    rows: list[Row] = [
        Row(
            "images",
            len(images),
            "",
            note="512x512; skimage bundled" + (f" + {data}" if data else ""),
        )
    ]
    table: dict[str, dict[str, str]] = {}
    clean = list(clean_crops(images, n_clean))
    for method in methods:
        crops = clean if "rivaGan" not in method.name else clean[: max(3, n_clean // 20)]
        tests = len(crops) * (len(keys) if method.name.startswith("trustgain") else 1)
        false_pos = sum(method.clean_statistic(c) for c in crops)
        rows.append(
            Row(
                f"{method.name}: clean false positives",
                false_pos,
                f"of {tests} tests",
                "0" if method.name.startswith("trustgain") else "",
                (false_pos == 0) if method.name.startswith("trustgain") else None,
            )
        )
        subset = images if "rivaGan" not in method.name else images[:rivagan_images]
        marked, psnr, ssim = [], [], []
        for i, (_, image) in enumerate(subset):
            out = method.embed(image, i)
            marked.append(out)
            p, s_ = quality(image, out)
            psnr.append(p)
            ssim.append(s_)
        mine = method.name.startswith("trustgain")
        rows.append(
            Row(
                f"{method.name}: PSNR",
                float(np.mean(psnr)),
                "dB",
                ">= 40 (mean)" if mine else "",
                (float(np.mean(psnr)) >= 40) if mine else None,
                f"min {min(psnr):.2f}; {sum(x < 40 for x in psnr)} below 40; "
                f"SSIM {np.mean(ssim):.4f}",
            )
        )
        if mine:
            raised = [j for j, s_ in enumerate(strengths) if s_ > pixel.STRENGTH]
            rows.append(Row(
                f"{method.name}: strength raised by the embed check", len(raised),
                f"of {len(strengths)} images", "", None,
                ("checked embed (what the CLI and stage run); "
                 + ", ".join(f"{subset[j][0]} x{strengths[j] / pixel.STRENGTH:.2f} "
                             f"({psnr[j]:.1f} dB)" for j in raised))
                if checked else "unchecked pixel.embed (--plain-embed)"))
        for name, attack in suite.items():
            hits, accs, exact = 0, [], []
            log.clear()
            for i, out in enumerate(marked):
                rng = np.random.default_rng([i, len(name)])
                detected, acc, ok = method.detect(attack(out, rng), i)
                hits += detected
                if acc is not None:
                    accs.append(acc)
                if ok is not None:
                    exact.append(ok)
            n = len(marked)
            lo, hi = wilson(hits, n)
            tpr = hits / n
            target = "report" if name in attacks.EXEMPT else ">= 0.95"
            rows.append(
                Row(
                    f"{method.name}: TPR@1e-3 {name}",
                    tpr,
                    f"of {n}",
                    target if mine else "",
                    (tpr >= 0.95) if mine and name not in attacks.EXEMPT else None,
                    f"95% CI {lo:.3f}-{hi:.3f}; bit acc {np.mean(accs):.3f}"
                    + (f"; exact payload {np.mean(exact):.3f} of detected" if exact else ""),
                )
            )
            table.setdefault(name, {})[method.name] = f"{tpr:.2f} ({np.mean(accs):.2f})"
            if mine:
                rows += strict_rows(name, list(log), name in attacks.EXEMPT)
    rows += speed_rows(images[0][1], 3 if quick else 10, peers)
    print_matrix(table, [m.name for m in methods])
    return rows


def speed_rows(image: Image.Image, repeat: int, peers: bool = True) -> list[Row]:
    key = bytes(32)
    marked = pixel.embed(image, key, b"\0\0\0\1")[0]
    ours_e = _time(lambda: pixel.embed(image, key, b"\0\0\0\1"), repeat)
    ours_c = _time(lambda: embed_checked(image, key, b"\0\0\0\1"), repeat)
    ours_d = _time(lambda: pixel.detect(marked, key), repeat)
    rows = [
        Row("trustgain pixel: embed ms/512x512", ours_e, "ms", "< 100", ours_e < 100),
        Row("trustgain pixel: checked embed ms/512x512", ours_c, "ms", "< 100", ours_c < 100,
            "embed + aligned read-back of the mark and payload (CLI and stage; no encoding)"),
        Row("trustgain pixel: detect ms/512x512", ours_d, "ms", "< 200", ours_d < 200),
    ]
    for name in ("dwtDctSvd", "dwtDct") if peers else ():
        m = peer(name, 48)
        peer_marked = m.embed(image, 0)
        e = _time(lambda m=m: m.embed(image, 0), repeat)
        d = _time(lambda m=m, pm=peer_marked: m.detect(pm, 0), repeat)
        rows += [
            Row(f"invisible-watermark {name}: embed ms/512x512", e, "ms"),
            Row(f"invisible-watermark {name}: detect ms/512x512", d, "ms"),
            Row(f"trustgain/{name} embed time ratio", ours_e / e, "x"),
            Row(f"trustgain/{name} checked embed time ratio", ours_c / e, "x"),
            Row(f"trustgain/{name} detect time ratio", ours_d / d, "x"),
        ]
    return rows


def print_matrix(table: dict[str, dict[str, str]], methods: list[str]) -> None:
    """TPR at FPR 1e-3 (bit accuracy) per attack and method, side by side."""
    short = [m.replace("invisible-watermark ", "") for m in methods]
    print("TPR@1e-3 (bit accuracy)".ljust(34) + "".join(s.ljust(22) for s in short))
    for attack, cells in table.items():
        print(attack.ljust(34) + "".join(cells.get(m, "-").ljust(22) for m in methods))
    print()


def texture_rows(nonces: int = 8) -> list[Row]:
    """Why dense textures (scikit-image's grass, gravel) defeat the mark, and whether more
    strength helps within PSNR >= 40 dB: the statistic z per image at the default strength, at
    the strength that lands on 40.0 dB (per image), and with that RMS change redistributed by
    local activity (texture masking: ``delta * sqrt(activity)``, rescaled to the same RMS)."""
    from scipy import ndimage
    from skimage import data as skdata

    key = bytes(range(32))
    threshold = pixel.threshold(FPR)
    rows = []
    for name in ("grass", "gravel", "brick", "astronaut"):
        image = square(Image.fromarray(getattr(skdata, name)()))
        y = pixel.luminance(image)
        high = y - ndimage.gaussian_filter(y, 4.0)
        activity = np.sqrt(np.maximum(ndimage.uniform_filter(high * high, 17), 0.0))
        host = float(np.sqrt(np.mean(high * high)))
        results: dict[str, list[tuple[float, bool, float]]] = {}
        for nonce in range(nonces):
            base, _ = pixel.embed(image, key, b"\1\2\3\4", nonce=nonce)
            psnr0 = quality(image, base)[0]
            to40 = pixel.STRENGTH * 10 ** ((psnr0 - 40.0) / 20)
            for _ in range(2):  # rounding and clipping: correct on the measured PSNR
                at = quality(image, pixel.embed(image, key, b"\1\2\3\4", nonce=nonce,
                                                strength=to40)[0])[0]
                to40 *= 10 ** ((at - 40.02) / 20)
            tile = pixel.pattern(key, nonce, b"\1\2\3\4")
            reps = (SIZE // pixel.TILE, SIZE // pixel.TILE)
            delta = np.tile(tile, reps) * np.sqrt(activity)
            delta *= to40 / delta.std()
            masked = Image.fromarray(np.clip(np.rint(np.asarray(image, float) + delta[..., None]),
                                             0, 255).astype(np.uint8))
            for label, out in (("default", base), ("40.0 dB", pixel.embed(
                    image, key, b"\1\2\3\4", nonce=nonce, strength=to40)[0]),
                               ("40.0 dB, texture-masked", masked)):
                d = pixel.detect(out, key, fpr=FPR)
                results.setdefault(label, []).append(
                    (d.z, d.payload == b"\1\2\3\4", quality(image, out)[0]))
        for label, res in results.items():
            z = np.array([r[0] for r in res])
            paid, psnr = np.mean([r[1] for r in res]), np.mean([r[2] for r in res])
            rows.append(Row(f"texture {name}: z, {label}", float(z.mean()), "z", "", None,
                            f"min {z.min():.2f}; detected {np.mean(z >= threshold):.2f} at "
                            f"1e-3 (z >= {threshold:.2f}); payload {paid:.2f}; PSNR {psnr:.2f} dB; "
                            f"host high-pass RMS {host:.1f}; {nonces} nonces"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m trustgain.bench.watermark [--quick] [--data DIR] [--no-peers]
    [--plain-embed] [--json P]``."""
    import argparse
    import json
    import os

    from trustgain.bench import format_table

    p = argparse.ArgumentParser(prog="python -m trustgain.bench.watermark")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--no-peers", action="store_true", help="leave invisible-watermark out")
    p.add_argument("--plain-embed", action="store_true",
                   help="mark with the unchecked pixel.embed at the default strength (the "
                        "protocol before the embed check) instead of the CLI's checked embed")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--texture", action="store_true", help="only the dense-texture analysis")
    args = p.parse_args(argv)
    start = time.time()
    if args.texture:
        rows = texture_rows(4 if args.quick else 8)
    else:
        rows = run(args.quick, data=args.data, peers=not args.no_peers,
                   checked=not args.plain_embed)
    print(format_table(rows))
    load = os.getloadavg()[0]
    print(f"\n{time.time() - start:.0f} s; 1-min load average at the end {load:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [r.as_dict() for r in rows],
                                         "seconds": round(time.time() - start),
                                         "load_average_1m_at_end": round(load, 2)}, indent=2))
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
