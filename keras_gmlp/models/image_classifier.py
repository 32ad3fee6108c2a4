"""Image classification on a gMLP vision backbone."""

import keras

from keras_gmlp.layers.masked_mean_pooling import MaskedMeanPooling
from keras_gmlp.models.base import FunctionalModel
from keras_gmlp.models.base import float32_logits
from keras_gmlp.models.vision_backbone import GMLPVisionBackbone


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPImageClassifier(FunctionalModel):
    """Mean-pools a `GMLPVisionBackbone` over patches and classifies (timm's head).

    Input: `(batch, height, width, channels)` images in [0, 255] (with the
    backbone's default `include_rescaling=True`).
    Output: float32 logits `(batch, num_classes)`.

    Args:
        backbone: a `GMLPVisionBackbone`.
        num_classes: int, number of classes.
        dropout: float, dropout before the classification layer.

    Example:
    ```python
    model = keras_gmlp.models.GMLPImageClassifier.from_preset("gmlp_s16_224", num_classes=1000)
    model.count_params()  # 19,422,656, as timm's gmlp_s16_224
    ```
    """

    _nested_model_args = ("backbone",)

    def __init__(self, backbone, num_classes, dropout=0.0, **kwargs):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        # Layers are locals until keras.Model.__init__ has run (see GMLPBackbone).
        policy = backbone.dtype_policy
        pooler = MaskedMeanPooling(dtype=policy, name="pooler")
        head_dropout = keras.layers.Dropout(dropout, dtype=policy, name="head_dropout")
        head = keras.layers.Dense(num_classes, dtype=policy, name="head")
        images = backbone.input
        logits = head(head_dropout(pooler(backbone(images))))
        super().__init__(inputs=images, outputs=float32_logits(logits), **kwargs)
        self.backbone = backbone
        self.pooler = pooler
        self.head_dropout = head_dropout
        self.head = head
        self.num_classes = num_classes
        self._remember_config(backbone=backbone, num_classes=num_classes, dropout=dropout)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """`keras.Model.compile` with AdamW(1e-3, wd 0.05), cross-entropy on logits, accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.05)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    @classmethod
    def from_preset(cls, preset, num_classes=1000, dropout=0.0, **backbone_overrides):
        """A classifier on `GMLPVisionBackbone.from_preset(preset, **backbone_overrides)`."""
        return cls(
            GMLPVisionBackbone.from_preset(preset, **backbone_overrides), num_classes, dropout
        )
