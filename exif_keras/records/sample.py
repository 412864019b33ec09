"""Built-in synthetic sample: MIRFLICKR-like photos whose pixels show how they were taken.

MIRFLICKR cannot be downloaded everywhere, yet the project has to run end to end (convert, train,
evaluate) on a fresh machine. This module renders a stand-in data set in the MIRFLICKR-25k layout
(``im<N>.jpg`` plus ``meta/exif/exif<N>.txt``), so the converter reads it like the real thing.

Each image is a physically motivated toy photograph:
  * camera settings come from the exposure triangle: a scene brightness EV, an ISO and an f-number
    fix the exposure time ``t = N^2 / (2^EV * ISO/100)``, snapped to a real shutter stop;
  * the exposure time shows as camera shake (a motion blur ``t * shake_rate`` pixels long, capped)
    and as extra blur on a moving object;
  * the f-number shows as defocus of the background and midground layers (radius ~ 1/N, with a
    small spread from the scene's depth and the focal length);
  * the ISO shows as signal-dependent sensor noise (variance ~ signal * gain, gain ~ ISO);
  * the JPEG is compressed at quality 85..95 and carries the settings as EXIF.

Everything is drawn from ``numpy.random.default_rng((seed, index))``: image ``index`` does not
depend on the others, nor on how the work was split between processes, so a seed gives
byte-identical files.
"""

from __future__ import annotations

import collections
import io
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import time
from fractions import Fraction
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, TiffImagePlugin

from exif_keras.common import files, labels
from exif_keras.common.console import StderrProgbar

SAMPLE_CAMERA = ("exif-keras", "Synthetic Camera")  # EXIF Make, Model
SAMPLE_VERSION = 2  # bump when the rendering changes, so cached samples are regenerated
MARKER = "sample_summary.json"  # written last: its presence means the directory is complete

LONG_SIDE = 500
SHORT_SIDE_RANGE = (250, 500)

# Camera shake in pixels per second of exposure (for a 500 px frame). The range is chosen so that
# the slowest "fast" stop (1/200 s) blurs by < 1.5 px and the fastest "slow" one (1/40 s) by >= 6.
SHAKE_RATE_RANGE = (240.0, 290.0)
# Long exposures are braced or stabilised: shake stops growing at this many pixels.
SHAKE_CAP_RANGE = (24.0, 40.0)
MOVING_OBJECT_PROBABILITY = 0.35
OBJECT_SPEED_RANGE = (150.0, 700.0)  # px/s of a moving object, on top of camera shake
OBJECT_BLUR_CAP = 60.0  # px; longer smears would leave only a faint ghost
NOISE_GAIN_PER_ISO100 = 1.0e-4  # variance of linear signal 1.0 at ISO 100 (shot noise)
READ_NOISE_PER_ISO100 = 2.0e-4  # std of the signal-independent floor at ISO 100
JPEG_QUALITY_RANGE = (85, 95)
# Aperture: defocus radius = DEFOCUS_SCALE * depth * (focal_length / 35) ** FOCAL_EXPONENT / N px,
# capped at DEFOCUS_CAP (f/2: ~8 px, f/5.6: ~3 px, f/16: ~1 px). The model sees neither the depth
# nor the focal length, so they are nuisance: version 1 let them scale the radius by 6x (depth
# 5..9 times sqrt(18..200 mm / 35)), 5 aperture stops of ambiguity over a 7-stop range, which
# capped what any model could learn from the pixels (BUILD.md, "The joint model on the sample").
# Now a photographer keeping the background at about the same distance (depth within +-15%) and
# a weak focal-length term leave a ~2x spread: the f-number dominates the blur, as it should.
DEFOCUS_SCALE = 16.0
DEPTH_RANGE = (0.85, 1.15)
FOCAL_EXPONENT = 0.25
DEFOCUS_CAP = 12.0

# Shutter stops in thirds, as cameras write them (exact fractions of a second).
SHUTTER_STOPS = tuple(Fraction(1, d) for d in (
    8000, 6400, 5000, 4000, 3200, 2500, 2000, 1600, 1250, 1000, 800, 640, 500, 400, 320, 250, 200,
    160, 125, 100, 80, 60, 50, 40, 30, 25, 20, 15, 13, 10, 8, 6, 5, 4)) + tuple(
    Fraction(s) for s in ("3/10", "2/5", "1/2", "3/5", "4/5", "1", "13/10", "8/5", "2", "5/2",
                          "16/5", "4", "5", "6", "8", "10", "13", "15", "20", "25", "30"))
_SHUTTER_LOG2 = np.log2(np.array([float(s) for s in SHUTTER_STOPS]))

# f-numbers as lenses report them, with how often they are used.
APERTURE_STOPS = (1.8, 2.0, 2.2, 2.5, 2.8, 3.2, 3.5, 4.0, 4.5, 5.0, 5.6, 6.3, 7.1, 8.0, 9.0, 10.0,
                  11.0, 13.0, 14.0, 16.0, 18.0, 22.0)
_APERTURE_WEIGHTS = np.array([5, 2, 1, 1, 8, 4, 5, 7, 5, 4, 8, 4, 4, 8, 4, 3,
                              5, 2, 1, 3, 1, 1], dtype=float)
_APERTURE_WEIGHTS /= _APERTURE_WEIGHTS.sum()
FOCAL_LENGTHS = (18, 24, 28, 35, 50, 55, 70, 85, 105, 135, 200)

# Scenes: (probability, EV range at ISO 100, ISO levels, their probabilities). Auto-ISO raises the
# ISO in dim light, as cameras do; bright scenes give fast shutters, dim ones slow shutters.
_SCENES = (
    (0.38, (12.0, 15.5), (80, 100, 200, 400), (0.08, 0.62, 0.24, 0.06)),     # sun, bright sky
    (0.17, (8.5, 12.5), (100, 200, 400, 800), (0.30, 0.35, 0.25, 0.10)),     # shade, overcast
    (0.45, (3.0, 8.5), (200, 400, 800, 1600, 3200), (0.10, 0.25, 0.30, 0.27, 0.08)),  # indoors
)
_RARE_ISO = (64, 125, 160, 250, 320, 500, 640, 1000, 1250)  # third stops some cameras write
_RARE_ISO_PROBABILITY = 0.04


# ----------------------------------------------------------------------------------------------
# Camera settings


def snap_shutter(seconds: float) -> Fraction:
    """The shutter stop a camera would pick for an exposure time (nearest in log2)."""
    index = int(np.argmin(np.abs(_SHUTTER_LOG2 - math.log2(seconds))))
    return SHUTTER_STOPS[index]


def draw_settings(rng: np.random.Generator) -> dict:
    """Draws a scene brightness and the camera settings that expose it.

    Returns exposure_time (float s) and exposure_fraction (exact Fraction), f_number, iso,
    focal_length (mm), scene_ev and exposure_bias: the EV by which the image ends up brighter
    than a correct exposure (metering error plus shutter snapping and clipping).
    """
    probabilities = np.array([s[0] for s in _SCENES])
    _, ev_range, isos, iso_p = _SCENES[int(rng.choice(len(_SCENES), p=probabilities))]
    ev = float(rng.uniform(*ev_range))
    if rng.random() < _RARE_ISO_PROBABILITY:
        iso = int(rng.choice(_RARE_ISO))
    else:
        iso = int(rng.choice(isos, p=iso_p))
    if rng.random() < 0.1:  # zoom compacts report in-between values, e.g. f/3.3 or f/4.9
        f_number = round(float(np.exp(rng.uniform(np.log(2.7), np.log(5.9)))), 1)
    else:
        f_number = float(APERTURE_STOPS[int(rng.choice(len(APERTURE_STOPS), p=_APERTURE_WEIGHTS))])
    focal_length = int(rng.choice(FOCAL_LENGTHS))
    metering_error = float(rng.normal(0.0, 0.2))

    ideal = f_number ** 2 / (2.0 ** ev * iso / 100.0)
    exposure = snap_shutter(ideal)
    bias = math.log2(float(exposure) / ideal) + metering_error
    return {
        "exposure_time": float(exposure),
        "exposure_fraction": exposure,
        "f_number": f_number,
        "iso": iso,
        "focal_length": focal_length,
        "scene_ev": ev,
        "exposure_bias": float(np.clip(bias, -1.5, 1.5)),
    }


def shutter_group(exposure_time: float) -> str:
    """'fast', 'slow' or 'neither': the binary shutter task's grouping (labels.py) of a time."""
    target = labels.task_spec("shutter", "binary").target(labels.shutter_class(exposure_time))
    return {0: "fast", 1: "slow"}.get(target, "neither")


def _fraction(settings: dict) -> Fraction:
    exact = settings.get("exposure_fraction")
    if exact is not None:
        return Fraction(exact)
    return Fraction(settings["exposure_time"]).limit_denominator(10000)


# ----------------------------------------------------------------------------------------------
# Rendering


def _draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) like MIRFLICKR: longer side 500, mostly 3:2 or 4:3, some portrait."""
    kind = rng.random()
    if kind < 0.40:
        short = 333
    elif kind < 0.75:
        short = 375
    elif kind < 0.80:
        short = 281
    elif kind < 0.85:
        short = 500
    else:
        short = int(rng.integers(SHORT_SIDE_RANGE[0], SHORT_SIDE_RANGE[1] + 1))
    portrait = rng.random() < 0.25
    return (LONG_SIDE, short) if portrait else (short, LONG_SIDE)


def _color(rng: np.random.Generator, lo: float = 0.08, hi: float = 0.95) -> np.ndarray:
    """A random, mostly unsaturated sRGB colour in [0, 1]."""
    grey = rng.uniform(lo, hi)
    tint = rng.normal(0.0, 0.15, 3)
    return np.clip(grey + tint, 0.02, 0.98).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Noise with features about `cell` pixels wide, in [-1, 1], shape (h, w)."""
    small = rng.integers(0, 256, (max(2, h // cell + 2), max(2, w // cell + 2)), dtype=np.uint8)
    big = Image.fromarray(small, "L").resize((w, h), Image.BICUBIC)
    return np.asarray(big, np.float32) / np.float32(127.5) - np.float32(1.0)


class _Object(NamedTuple):
    """A flat object in one layer: where it is, its shape, and its surface."""

    y: int
    x: int
    alpha: np.ndarray             # (h, w) coverage in [0, 1]
    pattern: Optional[np.ndarray]  # (h, w) index into palette, None for a plain surface
    palette: np.ndarray           # (2, 3) sRGB colours
    grain: float                  # amplitude of the fine surface grain

    def color(self) -> np.ndarray:
        return self.palette[0] if self.pattern is None else self.palette[self.pattern]


def _pattern(rng: np.random.Generator, h: int, w: int) -> Optional[np.ndarray]:
    """A surface pattern: none, stripes, checks or random blocks, as 0/1 indices."""
    kind = int(rng.integers(4))
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if kind == 0:
        return None
    if kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4.0, 24.0)
        phase = xx * np.float32(np.cos(angle) / period) + yy * np.float32(np.sin(angle) / period)
        return ((phase - np.floor(phase)) < rng.uniform(0.3, 0.7)).astype(np.uint8)
    if kind == 2:
        cell = rng.uniform(4.0, 18.0)
        return ((np.floor(xx / cell).astype(np.int32) + np.floor(yy / cell).astype(np.int32)) & 1
                ).astype(np.uint8)
    cell = int(rng.integers(3, 10))
    blocks = rng.integers(0, 2, (h // cell + 1, w // cell + 1), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, cell, 0), cell, 1)[:h, :w]


def _random_shape(rng: np.random.Generator, draw: ImageDraw.ImageDraw, h: int, w: int) -> None:
    """Draws one filled shape covering most of an h x w box (ellipse, box, polygon or bar)."""
    kind = int(rng.integers(4))
    if kind == 0:
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif kind == 1:
        draw.rectangle((0, 0, w - 1, h - 1), fill=255)
    elif kind == 2:
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.6, 1.0, n)
        points = [(float((0.5 + 0.5 * r * np.cos(a)) * (w - 1)),
                   float((0.5 + 0.5 * r * np.sin(a)) * (h - 1))) for a, r in zip(angles, radius)]
        draw.polygon(points, fill=255)
    else:
        width = max(2, int(min(h, w) * rng.uniform(0.1, 0.4)))
        if rng.random() < 0.5:
            draw.line((0, 0, w - 1, h - 1), fill=255, width=width)
        else:
            draw.line((0, h - 1, w - 1, 0), fill=255, width=width)


def _object(rng: np.random.Generator, h: int, w: int, size_range) -> _Object:
    """One random object, clipped to the h x w frame."""
    oh = max(4, int(rng.uniform(*size_range) * min(h, w)))
    ow = max(4, int(oh * rng.uniform(0.4, 2.5)))
    y0 = int(rng.integers(-oh // 3, h - 2 * oh // 3))
    x0 = int(rng.integers(-ow // 3, w - 2 * ow // 3))
    mask = Image.new("L", (ow, oh), 0)
    _random_shape(rng, ImageDraw.Draw(mask), oh, ow)
    ya, xa = max(0, y0), max(0, x0)
    yb, xb = min(h, y0 + oh), min(w, x0 + ow)
    alpha = np.asarray(mask.crop((xa - x0, ya - y0, xb - x0, yb - y0)), np.float32) / 255.0
    palette = np.stack([_color(rng), _color(rng)])
    return _Object(ya, xa, alpha, _pattern(rng, yb - ya, xb - xa), palette,
                   float(rng.uniform(0.04, 0.12)))


def _paint(canvas: np.ndarray, grain_amplitude: np.ndarray, obj: _Object) -> None:
    """Paints an object over a layer, and its grain amplitude over the layer's grain map."""
    h, w = obj.alpha.shape
    region = canvas[obj.y:obj.y + h, obj.x:obj.x + w]
    region += obj.alpha[..., None] * (obj.color() - region)
    amplitude = grain_amplitude[obj.y:obj.y + h, obj.x:obj.x + w]
    amplitude += obj.alpha * (np.float32(obj.grain) - amplitude)


def _paint_layer(canvas: np.ndarray, objects, grain: np.ndarray, base_grain: float = 0.0) -> None:
    """Paints objects, then adds the fine grain of whatever surface ended up on top.

    The grain matters: it gives every surface detail that defocus and motion visibly remove.
    """
    amplitude = np.full(grain.shape, base_grain, np.float32)
    for obj in objects:
        _paint(canvas, amplitude, obj)
    canvas += (amplitude * grain)[..., None]


def _background(rng: np.random.Generator, h: int, w: int, grain: np.ndarray) -> np.ndarray:
    """The far layer: a sky/ground gradient with clouds, texture and distant shapes."""
    top, bottom = _color(rng, 0.3, 0.95), _color(rng, 0.05, 0.7)
    angle = rng.normal(np.pi / 2, 0.3)
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ramp = np.clip(xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle)) + 0.5, 0, 1)
    shade = np.float32(rng.uniform(0.05, 0.15)) * _smooth_noise(rng, h, w, 48)
    shade += np.float32(rng.uniform(0.03, 0.10)) * _smooth_noise(rng, h, w, 6)
    out = ramp[..., None] * (bottom - top)
    out += top
    out += shade[..., None]
    objects = [_object(rng, h, w, (0.05, 0.35)) for _ in range(int(rng.integers(5, 13)))]
    _paint_layer(out, objects, grain, base_grain=float(rng.uniform(0.02, 0.06)))
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    scaled = np.multiply(image, np.float32(255.0))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def defocus_radius(f_number: float, focal_length: float, depth: float) -> float:
    """Defocus radius in pixels of the far layer: ~ 1/f-number, times the scene's depth factor
    and a weak focal-length factor, capped at DEFOCUS_CAP."""
    return min(DEFOCUS_CAP, DEFOCUS_SCALE * depth * (focal_length / 35.0) ** FOCAL_EXPONENT
               / f_number)


def _defocus(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian defocus of an sRGB layer (PIL's box-approximated blur: fast)."""
    if radius < 0.3:
        return image
    blurred = Image.fromarray(_to_uint8(image), "RGB").filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, np.float32) / np.float32(255.0)


def _path_taps(length: float, angle: float, bend: float) -> list[tuple[int, int, float]]:
    """Discrete blur kernel of a motion path `length` px long: (dy, dx, weight) taps.

    The path is a slightly bent segment sampled every half pixel. Short paths (fast shutters) are
    splatted bilinearly so that they blur by a fraction of a pixel, as they should; long ones are
    rounded to whole pixels, which looks the same and needs half the taps.
    """
    n = max(2, int(math.ceil(2.0 * length)) + 1)
    s = np.linspace(-0.5, 0.5, n)
    along, across = length * s, bend * length * (s * s - 1.0 / 12.0)
    x = along * math.cos(angle) - across * math.sin(angle)
    y = along * math.sin(angle) + across * math.cos(angle)
    if length >= 4.0:
        x0, y0 = np.rint(x), np.rint(y)
        corners = ((0, 0, np.ones(n)),)
    else:
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = x - x0, y - y0
        corners = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                   (1, 0, fy * (1 - fx)), (1, 1, fy * fx))
    taps: dict[tuple[int, int], float] = collections.defaultdict(float)
    for dy, dx, weight in corners:
        for yi, xi, wi in zip((y0 + dy).astype(int), (x0 + dx).astype(int), weight / n):
            taps[(int(yi), int(xi))] += float(wi)
    floor = 0.02 * max(taps.values())  # drop negligible corner splats
    kept = [(yi, xi, wi) for (yi, xi), wi in sorted(taps.items()) if wi > floor]
    total = sum(wi for _, _, wi in kept)
    return [(yi, xi, wi / total) for yi, xi, wi in kept]


def _convolve(image: np.ndarray, taps) -> np.ndarray:
    """Applies shift-and-add taps to an (h, w, c) image, edges extended by reflection.

    Taps of equal weight (most of a long path) are summed first and scaled once: one pass over
    the image per tap instead of two.
    """
    if len(taps) == 1:
        return image
    h, w = image.shape[:2]
    pad = max(max(abs(dy), abs(dx)) for dy, dx, _ in taps)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    groups: dict[float, list[tuple[int, int]]] = collections.defaultdict(list)
    for dy, dx, weight in taps:
        groups[round(weight, 7)].append((dy, dx))
    out = np.zeros_like(image)
    total = np.empty_like(image)
    for weight, shifts in groups.items():
        # output(y, x) = sum_k w_k * image(y - dy_k, x - dx_k)
        windows = [padded[pad - dy:pad - dy + h, pad - dx:pad - dx + w] for dy, dx in shifts]
        np.copyto(total, windows[0])
        for window in windows[1:]:
            total += window
        total *= np.float32(weight)
        out += total
    return out


_LINEAR = (np.arange(256, dtype=np.float32) / 255.0) ** 2  # sRGB-ish -> linear light, gamma 2
# Standard normal quantiles at 256 levels: indexing it with random bytes gives Gaussian noise
# ten times faster than Generator.standard_normal, with no visible difference.
_GAUSS = np.array([statistics.NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)])
_GAUSS = (_GAUSS / _GAUSS.std()).astype(np.float32)


def _gaussian_noise(rng: np.random.Generator, shape) -> np.ndarray:
    return _GAUSS[np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)]


def shake_length(exposure_time: float, shake_rate: float, shake_cap: float) -> float:
    """Camera-shake blur in pixels: proportional to the exposure time, capped for long ones."""
    return min(exposure_time * shake_rate, shake_cap)


def _smear_object(linear: np.ndarray, obj: _Object, grain: np.ndarray, taps) -> None:
    """Composites a moving object, its premultiplied colour and alpha smeared along its path."""
    h, w = linear.shape[:2]
    oh, ow = obj.alpha.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx, _ in taps)
    ya, xa = max(0, obj.y - pad), max(0, obj.x - pad)
    yb, xb = min(h, obj.y + oh + pad), min(w, obj.x + ow + pad)
    surface = obj.color() + (np.float32(obj.grain) * grain[obj.y:obj.y + oh, obj.x:obj.x + ow])[
        ..., None]
    layer = np.zeros((yb - ya, xb - xa, 4), np.float32)
    patch = layer[obj.y - ya:obj.y - ya + oh, obj.x - xa:obj.x - xa + ow]
    patch[..., :3] = _LINEAR[_to_uint8(surface)] * obj.alpha[..., None]
    patch[..., 3] = obj.alpha
    layer = _convolve(layer, taps)
    region = linear[ya:yb, xa:xb]
    region *= 1.0 - layer[..., 3:]
    region += layer[..., :3]


def render_image(rng: np.random.Generator, settings: dict) -> Image.Image:
    """Renders one photo taken with `settings` (see draw_settings) as an 8-bit RGB image.

    Every random draw happens whatever the settings, so the same rng state with different
    settings renders the same scene: tests compare shutter speeds on identical content.
    """
    h, w = _draw_size(rng)
    grain = _smooth_noise(rng, h, w, 2)  # fine surface detail, shared by all layers

    # Scene layers, far to near, in sRGB [0, 1].
    far = _background(rng, h, w, grain)
    middle = [_object(rng, h, w, (0.1, 0.45)) for _ in range(int(rng.integers(2, 7)))]
    near = [_object(rng, h, w, (0.08, 0.5)) for _ in range(int(rng.integers(12, 25)))]
    mover = _object(rng, h, w, (0.15, 0.4))
    has_mover = rng.random() < MOVING_OBJECT_PROBABILITY
    mover_speed = rng.uniform(*OBJECT_SPEED_RANGE)
    mover_angle, mover_bend = rng.uniform(0, 2 * np.pi), rng.normal(0.0, 0.1)
    depth = rng.uniform(*DEPTH_RANGE)
    shake_rate = rng.uniform(*SHAKE_RATE_RANGE)
    shake_cap = rng.uniform(*SHAKE_CAP_RANGE)
    shake_angle, shake_bend = rng.uniform(0, 2 * np.pi), rng.normal(0.0, 0.15)
    noise = _gaussian_noise(rng, (h, w, 3))

    # Aperture: out-of-focus layers blur with radius ~ 1 / f-number (defocus_radius); the near
    # layer is in focus.
    radius = defocus_radius(settings["f_number"], settings.get("focal_length", 35), depth)
    scene = _defocus(far, radius * 0.9)
    _paint_layer(scene, middle, grain)
    scene = _defocus(scene, radius * 0.45)
    _paint_layer(scene, near, grain)

    # To linear light, where motion blur and photon noise happen.
    linear = _LINEAR[_to_uint8(scene)]
    t = float(settings["exposure_time"])
    if has_mover:
        _smear_object(linear, mover, grain,
                      _path_taps(min(mover_speed * t, OBJECT_BLUR_CAP), mover_angle, mover_bend))
    # Shutter: camera shake over the exposure.
    linear = _convolve(linear, _path_taps(shake_length(t, shake_rate, shake_cap),
                                          shake_angle, shake_bend))

    # Exposure error, then ISO: shot noise with variance ~ signal * gain, plus a read-noise floor.
    linear *= np.float32(2.0 ** settings.get("exposure_bias", 0.0))
    np.clip(linear, 0.0, 1.0, out=linear)
    gain = settings["iso"] / 100.0
    sigma = np.sqrt(linear * np.float32(NOISE_GAIN_PER_ISO100 * gain)
                    + np.float32((READ_NOISE_PER_ISO100 * gain) ** 2))
    linear += sigma * noise
    np.clip(linear, 0.0, 1.0, out=linear)
    return Image.fromarray(_to_uint8(np.sqrt(linear)), "RGB")


# ----------------------------------------------------------------------------------------------
# Metadata: EXIF in the JPEG and MIRFLICKR's text files

TAG_MAKE, TAG_MODEL, TAG_EXIF_IFD = 0x010F, 0x0110, 0x8769
TAG_EXPOSURE_TIME, TAG_F_NUMBER, TAG_ISO = 0x829A, 0x829D, 0x8827
TAG_FLASH, TAG_FOCAL_LENGTH = 0x9209, 0x920A


def make_exif(settings: dict) -> Image.Exif:
    """The EXIF block a camera would write: Make/Model in IFD0, settings in the Exif sub-IFD."""
    exif = Image.Exif()
    exif[TAG_MAKE], exif[TAG_MODEL] = SAMPLE_CAMERA
    sub = exif.get_ifd(TAG_EXIF_IFD)
    exposure = _fraction(settings)
    f_number = Fraction(settings["f_number"]).limit_denominator(10)
    sub[TAG_EXPOSURE_TIME] = TiffImagePlugin.IFDRational(exposure.numerator, exposure.denominator)
    sub[TAG_F_NUMBER] = TiffImagePlugin.IFDRational(f_number.numerator, f_number.denominator)
    sub[TAG_ISO] = int(settings["iso"])
    sub[TAG_FOCAL_LENGTH] = TiffImagePlugin.IFDRational(int(settings.get("focal_length", 35)), 1)
    sub[TAG_FLASH] = 0  # flash did not fire
    return exif


def format_exposure(exposure: Fraction) -> str:
    """Flickr's wording: '2 sec', '0.3 sec (3/10)', '0.008 sec (1/125)'."""
    seconds = float(exposure)
    if seconds >= 1:
        return f"{seconds:g} sec"
    decimal = f"{seconds:.3f}" if seconds >= 0.01 else f"{seconds:.2g}"
    if "." in decimal:
        decimal = decimal.rstrip("0").rstrip(".")
    return f"{decimal} sec ({exposure.numerator}/{exposure.denominator})"


def exif_text(settings: dict) -> str:
    """The MIRFLICKR 'clean' EXIF text: a '-Label' line, then its value line, per tag."""
    rows = (
        ("Camera", SAMPLE_CAMERA[1]),
        ("Exposure", format_exposure(_fraction(settings))),
        ("Aperture", f"f/{settings['f_number']:.1f}"),
        ("ISO Speed", str(int(settings["iso"]))),
        ("Focal Length", f"{int(settings.get('focal_length', 35))} mm"),
        ("Flash", "Flash did not fire"),
    )
    return "".join(f"-{label}\n{value}\n" for label, value in rows)


# ----------------------------------------------------------------------------------------------
# Writing the data set


# Temporary files of a killed run: `files.temp_path` names (``im7.jpg.tmp-123``), and the
# ``im7.jpg.tmp123`` of earlier versions.
_TMP_NAME = re.compile(r"(im|exif)\d+\.(jpg|txt)\.tmp-?\d+")


def image_path(output_dir: str, number: int) -> str:
    return os.path.join(output_dir, f"im{number}.jpg")


def exif_path(output_dir: str, number: int) -> str:
    return os.path.join(output_dir, "meta", "exif", f"exif{number}.txt")


def make_image(seed: int, number: int) -> tuple[bytes, str, dict]:
    """(JPEG bytes, EXIF text, settings) of image `number` (1-based) of the sample of `seed`."""
    rng = np.random.default_rng((seed, number))
    settings = draw_settings(rng)
    image = render_image(rng, settings)
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, exif=make_exif(settings))
    return buffer.getvalue(), exif_text(settings), settings


def _write_one(job: tuple[str, int, int]) -> dict:
    output_dir, seed, number = job
    jpeg, text, settings = make_image(seed, number)
    files.write_bytes_atomic(image_path(output_dir, number), jpeg)
    files.write_text_atomic(exif_path(output_dir, number), text)
    return {"exposure": str(settings["exposure_fraction"]), "f_number": settings["f_number"],
            "iso": settings["iso"], "group": shutter_group(settings["exposure_time"])}


def _pool_context():
    """fork where cheap and safe (Linux, no TensorFlow threads in this process), else spawn."""
    if sys.platform.startswith("linux") and "tensorflow" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _histogram(values) -> dict:
    counts = collections.Counter(values)
    return {str(k): counts[k] for k in sorted(counts, key=lambda v: float(Fraction(str(v))))}


def read_marker(output_dir: str) -> Optional[dict]:
    """The summary of a completed sample in `output_dir`, or None if there is none."""
    try:
        with open(os.path.join(output_dir, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(output_dir: str, count: int = 1500, seed: int = 0) -> bool:
    """Whether `output_dir` already holds exactly this sample (same count, seed and version)."""
    marker = read_marker(output_dir)
    return bool(marker) and (marker.get("count"), marker.get("seed"), marker.get("version")) == (
        count, seed, SAMPLE_VERSION)


def generate_sample(output_dir: str, count: int = 1500, seed: int = 0,
                    workers: Optional[int] = None, progress: bool = True) -> dict:
    """Writes `count` synthetic photos in the MIRFLICKR-25k layout and returns a summary.

    The summary (also written last as ``sample_summary.json``, the completion marker) holds count,
    seed, seconds and histograms of the settings. Re-running after a kill gives the same files.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    os.makedirs(os.path.join(output_dir, "meta", "exif"), exist_ok=True)
    previous = read_marker(output_dir)
    marker_path = os.path.join(output_dir, MARKER)
    if os.path.exists(marker_path):
        os.remove(marker_path)  # incomplete until this run finishes
    if previous and int(previous.get("count", 0)) > count:  # images of a larger earlier sample
        for number in range(count + 1, int(previous["count"]) + 1):
            for path in (image_path(output_dir, number), exif_path(output_dir, number)):
                if os.path.exists(path):
                    os.remove(path)
    for folder in (output_dir, os.path.join(output_dir, "meta", "exif")):
        for name in os.listdir(folder):  # temporary files of a killed run
            if _TMP_NAME.fullmatch(name):
                os.remove(os.path.join(folder, name))

    workers = max(1, min(workers or os.cpu_count() or 1, count))
    jobs = [(output_dir, seed, number) for number in range(1, count + 1)]
    start = time.perf_counter()
    results = []
    if workers == 1:
        bar = StderrProgbar(count, "sample", enabled=progress)
        for job in jobs:
            results.append(_write_one(job))
            bar.update()
    else:
        # The pool (forked where `_pool_context` may) starts before the bar imports Keras.
        with _pool_context().Pool(workers) as pool:
            bar = StderrProgbar(count, "sample", enabled=progress)
            for result in pool.imap(_write_one, jobs, chunksize=8):
                results.append(result)
                bar.update()
    bar.close()
    seconds = time.perf_counter() - start

    groups = collections.Counter(r["group"] for r in results)
    summary = {
        "version": SAMPLE_VERSION,
        "count": count,
        "seed": seed,
        "seconds": round(seconds, 2),
        "workers": workers,
        "camera": list(SAMPLE_CAMERA),
        "shutter_groups": {g: groups.get(g, 0) for g in ("fast", "neither", "slow")},
        "exposure_time": _histogram(r["exposure"] for r in results),
        "f_number": _histogram(r["f_number"] for r in results),
        "iso": _histogram(r["iso"] for r in results),
    }
    files.write_text_atomic(marker_path, json.dumps(summary, indent=1))
    summary["output_dir"] = output_dir
    return summary
