"""Model configurations. Every config: input 150x150x3 in [0,1], a 128-d LINEAR embedding layer
named "embedding", then a softmax named "probabilities" over the classes.

`reference` is the study's architecture, kept as a named baseline. `improved` keeps its conv
stack (same cost on CPU) and adds batch normalisation, dropout, label smoothing, class weights,
light augmentation and a cosine learning-rate schedule (see training.train).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from artlens.image import INPUT_SIZE

EMBEDDING_SIZE = 128


@dataclass(frozen=True)
class ModelConfig:
    name: str
    augment: bool
    label_smoothing: float
    learning_rate: float
    cosine_schedule: bool
    batch_size: int = 32
    weight_decay: float = 0.0
    dropout: float = 0.0
    notes: str = ""
    extra: dict = field(default_factory=dict)


CONFIGS: dict[str, ModelConfig] = {
    "reference": ModelConfig(
        name="reference",
        augment=False,
        label_smoothing=0.0,
        learning_rate=1e-3,
        cosine_schedule=False,
        notes="Conv 16-32-64-128-256 (3x3 ReLU, 2x2 max-pool each), GAP, 3x Dense 128 ReLU, "
        "Dense 128 linear (embedding), softmax; Adam 1e-3.",
    ),
    "improved": ModelConfig(
        name="improved",
        augment=True,
        label_smoothing=0.05,
        learning_rate=3e-3,
        cosine_schedule=True,
        weight_decay=1e-4,
        dropout=0.2,
        notes="The reference conv stack (16-32-64-128-256, 3x3) with batch norm after every "
        "conv, GAP, dropout 0.2, Dense 128 ReLU, Dense 128 linear (embedding), softmax; AdamW "
        "3e-3 with cosine decay, label smoothing 0.05, class weights, light augmentation "
        "(flips, crops, brightness/contrast, greyscale and paper tone).",
    ),
}


def build_model(config: ModelConfig, num_classes: int, seed: int = 0):
    """Returns a Keras functional model image -> [probabilities, embedding]."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(INPUT_SIZE, INPUT_SIZE, 3), name="image")
    if config.name == "reference":
        x = inputs
        for filters in (16, 32, 64, 128, 256):
            x = layers.Conv2D(filters, 3, activation="relu")(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.GlobalAveragePooling2D()(x)
        for _ in range(3):
            x = layers.Dense(128, activation="relu")(x)
    else:
        # The reference's conv stack with batch normalisation after every convolution (so a
        # higher learning rate converges within the few epochs a CPU affords), then dropout.
        x = inputs
        for filters in (16, 32, 64, 128, 256):
            x = layers.Conv2D(filters, 3, use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)  # few steps per epoch on CPU
            x = layers.ReLU()(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dropout(config.dropout)(x)
        x = layers.Dense(128, activation="relu")(x)
    embedding = layers.Dense(EMBEDDING_SIZE, activation=None, name="embedding")(x)
    probabilities = layers.Dense(num_classes, activation="softmax", name="probabilities")(embedding)
    return keras.Model(inputs, [probabilities, embedding], name=f"artlens_{config.name}")


def classifier_view(model):
    """The same layers with only the softmax output, for fit/evaluate."""
    import keras

    return keras.Model(model.input, model.get_layer("probabilities").output)


def compile_for_training(model, config: ModelConfig, steps_per_epoch: int, epochs: int):
    import keras

    if config.cosine_schedule:
        lr = keras.optimizers.schedules.CosineDecay(
            config.learning_rate,
            decay_steps=max(1, steps_per_epoch * epochs),
            alpha=0.02,
            warmup_target=None,
        )
    else:
        lr = config.learning_rate
    if config.weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=lr)
    clf = classifier_view(model)
    clf.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    return clf
