"""BERT-style masked language model on a gMLP backbone."""

import keras
import keras_hub

from keras_gmlp.models.base import FunctionalModel
from keras_gmlp.models.base import float32_logits
from keras_gmlp.models.text_backbone import GMLPBackbone


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPMaskedLM(FunctionalModel):
    """A `GMLPBackbone` with a masked-LM head tied to its token embedding.

    The head (keras-hub's `MaskedLMHead`: dense, GELU, LayerNorm, then the
    transposed input embedding) is evaluated only at `mask_positions`.

    Inputs: the backbone's `token_ids` and `padding_mask`, plus
    `mask_positions`, `(batch, num_masked)` int indices into the sequence.
    Output: float32 logits `(batch, num_masked, vocabulary_size)`.

    Train with `(inputs, mask_ids, mask_weights)` batches, as produced by
    `keras_hub.layers.MaskedLMMaskGenerator`: `mask_weights` is the sample
    weight, so padded mask slots count neither in the loss nor in the
    default `weighted_metrics`.

    Args:
        backbone: a `GMLPBackbone`.
    """

    _nested_model_args = ("backbone",)

    def __init__(self, backbone, **kwargs):
        # Layers are locals until keras.Model.__init__ has run (see GMLPBackbone).
        mlm_head = keras_hub.layers.MaskedLMHead(
            vocabulary_size=backbone.vocabulary_size,
            token_embedding=backbone.token_embedding,
            intermediate_activation="gelu",  # Keras' gelu is the exact (erf) form
            layer_norm_epsilon=1e-6,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            # keras-hub's head has autocast=False and adds a float32 bias to outputs of its own
            # compute dtype, which fails under mixed_bfloat16. In float32 the head's small dense
            # and LayerNorm run in float32 while the vocabulary projection (the tied embedding,
            # the large matmul) keeps the backbone's compute dtype.
            dtype="float32",
            name="mlm_head",
        )
        inputs = {
            **backbone.input,
            "mask_positions": keras.Input(shape=(None,), dtype="int32", name="mask_positions"),
        }
        sequence = backbone(backbone.input)
        logits = mlm_head(sequence, mask_positions=inputs["mask_positions"])
        super().__init__(inputs=inputs, outputs=float32_logits(logits), **kwargs)
        self.backbone = backbone
        self.mlm_head = mlm_head
        self._remember_config(backbone=backbone)

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        """`keras.Model.compile` with masked-LM defaults.

        "auto" gives AdamW(1e-4), sparse cross-entropy on logits averaged
        over the sum of the sample weights (BERT's normalisation: padded mask
        slots count neither in the numerator nor in the denominator), and a
        sample-weighted accuracy.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.01)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"
            )
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

    @classmethod
    def from_preset(cls, preset, **backbone_overrides):
        """A masked LM on `GMLPBackbone.from_preset(preset, **backbone_overrides)`."""
        return cls(GMLPBackbone.from_preset(preset, **backbone_overrides))
