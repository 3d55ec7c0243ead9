"""The image attack suite of BENCHMARKS.md, as named, seeded functions on PIL images.

Every watermark benchmark uses these same functions, so methods are compared on identical
attacked images. Parameters follow the suite: JPEG with 4:2:0 chroma subsampling; resize
restored to the original size or kept; crops by area fraction; rotation without expansion
(corners filled black, as screenshots and editors do); noise on the [0, 1] scale.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

Attack = Callable[[Image.Image, np.random.Generator], Image.Image]


def jpeg(quality: int) -> Attack:
    def attack(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=2)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return attack


def resize(factor: float, *, restore: bool) -> Attack:
    def attack(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        small = image.resize(
            (max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC
        )
        return small.resize((w, h), Image.Resampling.BICUBIC) if restore else small

    return attack


def crop(area: float, *, random: bool) -> Attack:
    side = float(np.sqrt(area))

    def attack(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        cw, ch = round(w * side), round(h * side)
        if random:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        else:
            x, y = (w - cw) // 2, (h - ch) // 2
        return image.crop((x, y, x + cw, y + ch))

    return attack


def rotate(degrees: float) -> Attack:
    def attack(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)

    return attack


def blur(sigma: float) -> Attack:
    def attack(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    return attack


def noise(sigma: float) -> Attack:
    def attack(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        array = np.asarray(image, dtype=np.float32) / 255.0
        noisy = array + rng.normal(0.0, sigma, array.shape).astype(np.float32)
        return Image.fromarray((np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8))

    return attack


def brightness(factor: float) -> Attack:
    return lambda image, rng: ImageEnhance.Brightness(image).enhance(factor)


def contrast(factor: float) -> Attack:
    return lambda image, rng: ImageEnhance.Contrast(image).enhance(factor)


def cascade(*attacks: Attack) -> Attack:
    def attack(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for a in attacks:
            image = a(image, rng)
        return image

    return attack


#: The suite, in the order of BENCHMARKS.md.
SUITE: dict[str, Attack] = {
    "none": lambda image, rng: image,
    "jpeg90": jpeg(90),
    "jpeg75": jpeg(75),
    "jpeg50": jpeg(50),
    "jpeg25": jpeg(25),
    "resize0.5_restored": resize(0.5, restore=True),
    "resize0.75_restored": resize(0.75, restore=True),
    "resize0.5_kept": resize(0.5, restore=False),
    "resize0.75_kept": resize(0.75, restore=False),
    "crop_centre_75": crop(0.75, random=False),
    "crop_centre_50": crop(0.50, random=False),
    "crop_random_75": crop(0.75, random=True),
    "crop_random_50": crop(0.50, random=True),
    "rotate5": rotate(5),
    "rotate15": rotate(15),
    "blur1": blur(1),
    "blur2": blur(2),
    "noise0.02": noise(0.02),
    "noise0.05": noise(0.05),
    "brightness1.3": brightness(1.3),
    "brightness0.7": brightness(0.7),
    "contrast1.5": contrast(1.5),
    "cascade_jpeg75_resize0.75_crop75": cascade(
        jpeg(75), resize(0.75, restore=False), crop(0.75, random=True)
    ),
    "screenshot_rescale0.83": resize(0.83, restore=False),
}

#: Attacks the pixel mark is not required to survive (reported all the same).
EXEMPT = frozenset({"rotate15", "jpeg25"})
