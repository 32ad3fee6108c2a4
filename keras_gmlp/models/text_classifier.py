"""Sequence classification on a gMLP backbone (e.g. SST-2, MNLI fine-tuning)."""

import keras

from keras_gmlp.layers.masked_mean_pooling import MaskedMeanPooling
from keras_gmlp.models.base import FunctionalModel
from keras_gmlp.models.base import float32_logits
from keras_gmlp.models.text_backbone import GMLPBackbone


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPTextClassifier(FunctionalModel):
    """Mean-pools a `GMLPBackbone` over real tokens and classifies.

    Inputs: the backbone's `token_ids` and `padding_mask`.
    Output: float32 logits `(batch, num_classes)`.

    Args:
        backbone: a `GMLPBackbone` (pretrained weights are kept).
        num_classes: int, number of classes.
        dropout: float, dropout before the classification layer.
    """

    _nested_model_args = ("backbone",)

    def __init__(self, backbone, num_classes, dropout=0.1, **kwargs):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        # Layers are locals until keras.Model.__init__ has run (see GMLPBackbone).
        policy = backbone.dtype_policy
        pooler = MaskedMeanPooling(dtype=policy, name="pooler")
        head_dropout = keras.layers.Dropout(dropout, dtype=policy, name="head_dropout")
        head = keras.layers.Dense(num_classes, dtype=policy, name="head")
        inputs = backbone.input
        pooled = pooler(backbone(inputs), padding_mask=inputs["padding_mask"])
        logits = head(head_dropout(pooled))
        super().__init__(inputs=inputs, outputs=float32_logits(logits), **kwargs)
        self.backbone = backbone
        self.pooler = pooler
        self.head_dropout = head_dropout
        self.head = head
        self.num_classes = num_classes
        self._remember_config(backbone=backbone, num_classes=num_classes, dropout=dropout)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """`keras.Model.compile` with AdamW(2e-5), sparse cross-entropy on logits and accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(2e-5, weight_decay=0.01)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    @classmethod
    def from_preset(cls, preset, num_classes, dropout=0.1, **backbone_overrides):
        """A classifier on `GMLPBackbone.from_preset(preset, **backbone_overrides)`."""
        return cls(GMLPBackbone.from_preset(preset, **backbone_overrides), num_classes, dropout)
