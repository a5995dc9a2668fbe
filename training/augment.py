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
