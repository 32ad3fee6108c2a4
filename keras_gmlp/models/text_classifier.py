"""Sequence classification on a gMLP backbone (e.g. SST-2, MNLI fine-tuning)."""

import keras
import keras_hub

from keras_gmlp import validation
from keras_gmlp.layers.masked_mean_pooling import MaskedMeanPooling
from keras_gmlp.models import recipe
from keras_gmlp.models.base import TaskMixin
from keras_gmlp.models.base import check_backbone
from keras_gmlp.models.base import check_task_kwargs
from keras_gmlp.models.base import float32_logits
from keras_gmlp.models.base import resolve_policy_maps
from keras_gmlp.models.text_backbone import GMLPBackbone
from keras_gmlp.models.text_preprocessors import check_fits_backbone
from keras_gmlp.models.text_preprocessors import GMLPTextClassifierPreprocessor


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPTextClassifier(TaskMixin, keras_hub.models.TextClassifier):
    """Mean-pools a `GMLPBackbone` over real tokens and classifies (a keras-hub task).

    Inputs: the backbone's `token_ids` and `padding_mask`, or raw strings with a
    `preprocessor` (`GMLPTextClassifierPreprocessor`).
    Output: float32 logits `(batch, num_classes)`.

    Args:
        backbone: a `GMLPBackbone` (pretrained weights are kept).
        num_classes: int, number of classes.
        preprocessor: optional `GMLPTextClassifierPreprocessor`.
        dropout: float, dropout before the classification layer (BERT's 0.1).
        head_dtype: optional dtype policy of the layers after the backbone (default: the
            backbone's). After `quantize`, `get_config` stores a `DTypePolicyMap` here, so a
            reloaded classifier rebuilds its quantized head.
        compile: compile with the recipe's defaults (see `compile`).

    Example:
    ```python
    classifier = keras_hub.models.TextClassifier.from_preset("my_preset", num_classes=2)
    classifier.fit(["a fine film", "a dull film"], [1, 0])
    ```
    """

    backbone_cls = GMLPBackbone
    preprocessor_cls = GMLPTextClassifierPreprocessor

    def __init__(self, backbone, num_classes, preprocessor=None, dropout=0.1, head_dtype=None,
                 **kwargs):
        kwargs.pop("keras_gmlp_version", None)
        check_backbone(type(self), backbone, GMLPBackbone, "token ids in, one vector per token out")
        validation.check_positive_int("num_classes", num_classes)
        validation.check_rate("dropout", dropout)
        check_task_kwargs(type(self), kwargs)
        check_fits_backbone(preprocessor, backbone)
        policy = self._head_policy(head_dtype, backbone.dtype_policy)
        # keras-hub's Task.__setattr__ lets these be set before keras.Model.__init__ on torch.
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.pooler = MaskedMeanPooling(dtype=policy, name="pooler")
        self.head_dropout = keras.layers.Dropout(dropout, dtype=policy, name="head_dropout")
        self.head = keras.layers.Dense(num_classes, dtype=policy, name="head")
        inputs = backbone.input
        pooled = self.pooler(backbone(inputs), padding_mask=inputs["padding_mask"])
        logits = self.head(self.head_dropout(pooled))
        super().__init__(inputs=inputs, outputs=float32_logits(logits), **kwargs)
        resolve_policy_maps(self)
        self.num_classes = num_classes
        self.dropout = dropout

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dropout": self.dropout}

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """`keras.Model.compile` with keras_gmlp's recipe: AdamW(2e-5, weight decay 0.01, none
        on LayerNorm and biases), sparse cross-entropy on logits and accuracy."""
        if optimizer == "auto":
            optimizer = recipe.task_optimizer("text_classifier")
        if loss == "auto":
            loss = recipe.classification_loss()
        if metrics == "auto":
            metrics = recipe.accuracy_metrics()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
