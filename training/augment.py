"""Training-time augmentation (tf.data), so the exported graph holds no augmentation ops.

Drawings and engravings come from other sources (museum scans, yellowed book pages) than the
Kaggle classes; colour, greyscale and paper-tone jitter keep the model from learning the source
instead of the medium.
"""

from __future__ import annotations


def augment_fn(seed: int):
    import tensorflow as tf

    def augment(image, label):
        # image: float32 [150,150,3] in [0,1]
        image = tf.image.random_flip_left_right(image)
        scale = tf.random.uniform([], 1.0, 1.12)
        size = tf.cast(150.0 * scale, tf.int32)
        image = tf.image.resize(image, [size, size])
        image = tf.image.random_crop(image, [150, 150, 3])
        image = tf.image.random_brightness(image, 0.08)
        image = tf.image.random_contrast(image, 0.9, 1.1)
        grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
        image = tf.where(tf.random.uniform([]) < 0.1, grey, image)
        # paper tone: a warm tint as on aged paper
        tint = tf.stack([1.0, tf.random.uniform([], 0.92, 1.0), tf.random.uniform([], 0.8, 1.0)])
        image = tf.where(tf.random.uniform([]) < 0.1, image * tint, image)
        return tf.clip_by_value(image, 0.0, 1.0), label

    return augment


# --- views for the backbone (model v2) ----------------------------------------------------------
# Features of a few augmented views per picture are computed once and cached, so these run in
# numpy/Pillow on the uint8 cache form. Each transform is one a real upload or another source
# brings: phone crops and margins, rescaling, JPEG, exposure, greyscale scans of colour works
# and colour scans of monochrome ones, yellowed paper, scanner noise, a page not quite flat.

PAPER_TONES = ((244, 236, 214), (236, 224, 196), (250, 247, 240), (226, 214, 186))
BORDER_COLOURS = ((255, 255, 255), (245, 240, 228), (20, 20, 20), (128, 128, 128))


def view(pixels, rng):
    """uint8 [S,S,3] -> an augmented uint8 [S,S,3] view (same size)."""
    import numpy as np
    from PIL import Image, ImageEnhance

    size = pixels.shape[0]
    img = Image.fromarray(pixels)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:  # a margin or frame added around the work
        pad = int(size * rng.uniform(0.04, 0.15))
        colour = BORDER_COLOURS[rng.integers(len(BORDER_COLOURS))]
        framed = Image.new("RGB", (size + 2 * pad, size + 2 * pad), colour)
        framed.paste(img, (pad, pad))
        img = framed
    if rng.random() < 0.25:  # small rotation, page not flat
        img = img.rotate(
            float(rng.uniform(-6, 6)), Image.Resampling.BILINEAR, expand=False, fillcolor=(255,) * 3
        )
    if rng.random() < 0.2:  # mild perspective (camera not square to the wall)
        w, h = img.size
        d = rng.uniform(-0.05, 0.05, 8) * [w, h, w, h, w, h, w, h]
        quad = np.array([0, 0, 0, h, w, h, w, 0], float) + d
        img = img.transform(
            (w, h),
            Image.Transform.QUAD,
            tuple(quad),
            Image.Resampling.BILINEAR,
            fillcolor=(255,) * 3,
        )
    # random resized crop: 55-100 % of the area, aspect 3:4 to 4:3 (crops margins away, too)
    w, h = img.size
    area = rng.uniform(0.55, 1.0) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(np.sqrt(area * aspect))), min(h, int(np.sqrt(area / aspect)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.3:  # rescale: detail lost to a small upload
        s = rng.uniform(0.35, 0.8)
        img = img.resize((max(8, int(cw * s)), max(8, int(ch * s))), Image.Resampling.BILINEAR)
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.75, 1.25)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.75, 1.25)))
    if rng.random() < 0.5:
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
    arr = np.asarray(img, dtype=np.float32)
    u = rng.random()
    if u < 0.3:  # greyscale (a monochrome reproduction of a colour work)
        arr = np.repeat(arr @ np.array([[0.299], [0.587], [0.114]], np.float32), 3, axis=2)
    elif u < 0.5:  # paper tone: ink on toned paper, multiplied (a yellowed page or a sepia print)
        grey = arr @ np.array([0.299, 0.587, 0.114], np.float32)
        tone = np.array(PAPER_TONES[rng.integers(len(PAPER_TONES))], np.float32) / 255.0
        mix = rng.uniform(0.5, 1.0)
        arr = mix * grey[..., None] * tone + (1 - mix) * arr
    if rng.random() < 0.3:  # scanner / sensor noise
        arr = arr + rng.normal(0, rng.uniform(2, 8), arr.shape).astype(np.float32)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:  # JPEG re-encoding
        import io

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(rng.integers(35, 95)))
        arr = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.uint8)
    return arr
