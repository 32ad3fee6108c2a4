"""BERT-style masked language model on a gMLP backbone."""

import keras
import keras_hub

from keras_gmlp.layers.spatial_gating_unit import exact_gelu
from keras_gmlp.models import recipe
from keras_gmlp.models.base import TaskMixin
from keras_gmlp.models.base import check_backbone
from keras_gmlp.models.base import check_task_kwargs
from keras_gmlp.models.base import float32_logits
from keras_gmlp.models.base import resolve_policy_maps
from keras_gmlp.models.text_backbone import GMLPBackbone
from keras_gmlp.models.text_preprocessors import check_fits_backbone
from keras_gmlp.models.text_preprocessors import GMLPMaskedLMPreprocessor


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPMaskedLM(TaskMixin, keras_hub.models.MaskedLM):
    """A `GMLPBackbone` with a masked-LM head tied to its token embedding (a keras-hub task).

    The head (keras-hub's `MaskedLMHead`: dense, GELU, LayerNorm, then the
    transposed input embedding) is evaluated only at `mask_positions`.

    Inputs: the backbone's `token_ids` and `padding_mask`, plus
    `mask_positions`, `(batch, num_masked)` int indices into the sequence.
    Output: float32 logits `(batch, num_masked, vocabulary_size)`.

    With a `preprocessor` (`GMLPMaskedLMPreprocessor`), `fit` takes raw strings and masks
    them on the fly. Without one, train with `(inputs, mask_ids, mask_weights)` batches, as
    `keras_gmlp.data.mlm_dataset` produces: `mask_weights` is the sample weight, so padded mask
    slots count neither in the loss nor in the default `weighted_metrics`.

    Args:
        backbone: a `GMLPBackbone`.
        preprocessor: optional `GMLPMaskedLMPreprocessor`.
        head_dtype: optional dtype policy of the masked-LM head (default float32, see the
            code). After `quantize`, `get_config` stores a `DTypePolicyMap` here, so a reloaded
            model rebuilds its quantized head.
        compile: compile with the recipe's defaults (see `compile`).
    """

    backbone_cls = GMLPBackbone
    preprocessor_cls = GMLPMaskedLMPreprocessor

    def __init__(self, backbone, preprocessor=None, head_dtype=None, **kwargs):
        kwargs.pop("keras_gmlp_version", None)
        check_backbone(type(self), backbone, GMLPBackbone, "token ids in, one vector per token out")
        check_task_kwargs(type(self), kwargs)
        check_fits_backbone(preprocessor, backbone)
        # keras-hub's Task.__setattr__ lets these be set before keras.Model.__init__ on torch.
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.mlm_head = keras_hub.layers.MaskedLMHead(
            vocabulary_size=backbone.vocabulary_size,
            token_embedding=backbone.token_embedding,
            # The blocks' exact GELU: Keras' "gelu" traces to TensorFlow's erfc form, which
            # tf2onnx cannot convert (model.export(format="onnx")).
            intermediate_activation=exact_gelu,
            layer_norm_epsilon=1e-6,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            # keras-hub's head has autocast=False and adds a float32 bias to outputs of its own
            # compute dtype, which fails under mixed_bfloat16. In float32 the head's small dense
            # and LayerNorm run in float32 while the vocabulary projection (the tied embedding,
            # the large matmul) keeps the backbone's compute dtype.
            dtype=self._head_policy(head_dtype, "float32"),
            name="mlm_head",
        )
        inputs = {
            **backbone.input,
            "mask_positions": keras.Input(shape=(None,), dtype="int32", name="mask_positions"),
        }
        sequence = backbone(backbone.input)
        logits = self.mlm_head(sequence, mask_positions=inputs["mask_positions"])
        super().__init__(inputs=inputs, outputs=float32_logits(logits), **kwargs)
        resolve_policy_maps(self)

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto", **kwargs):
        """`keras.Model.compile` with keras_gmlp's recipe (`keras_gmlp.models.recipe`).

        "auto" gives AdamW(1e-4, weight decay 0.01, none on LayerNorm and biases), sparse
        cross-entropy on logits averaged over the sum of the sample weights (BERT's
        normalisation), and a sample-weighted accuracy.
        """
        if optimizer == "auto":
            optimizer = recipe.task_optimizer("masked_lm")
        if loss == "auto":
            loss = recipe.masked_lm_loss()
        if weighted_metrics == "auto":
            weighted_metrics = recipe.accuracy_metrics()
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)
