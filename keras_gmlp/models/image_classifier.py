"""Image classification on a gMLP vision backbone."""

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
from keras_gmlp.models.image_preprocessor import GMLPImageClassifierPreprocessor
from keras_gmlp.models.vision_backbone import GMLPVisionBackbone


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPImageClassifier(TaskMixin, keras_hub.models.ImageClassifier):
    """Mean-pools a `GMLPVisionBackbone` over patches and classifies (timm's head).

    keras-hub's `ImageClassifier` pools a 4-D feature map; a gMLP backbone returns tokens
    `(batch, num_patches, hidden_dim)`, so this head mean-pools the tokens itself (as
    keras-hub's ViT classifier does) and builds its own layers.

    Input: `(batch, height, width, channels)` images in [0, 255] (with the
    backbone's default `include_rescaling=True`).
    Output: float32 logits `(batch, num_classes)`.

    Args:
        backbone: a `GMLPVisionBackbone`.
        num_classes: int, number of classes.
        preprocessor: optional `GMLPImageClassifierPreprocessor` (arrays or file bytes).
        dropout: float, dropout before the classification layer (timm's 0.0).
        head_dtype: optional dtype policy of the layers after the backbone (default: the
            backbone's; keras-hub's `ImageClassifier` argument). After `quantize`, `get_config`
            stores a `DTypePolicyMap` here, so a reloaded classifier rebuilds its quantized head.
        compile: compile with the recipe's defaults (see `compile`).

    Example:
    ```python
    model = keras_gmlp.models.GMLPImageClassifier.from_preset("gmlp_s16_224", num_classes=1000)
    model.count_params()  # 19,422,656, as timm's gmlp_s16_224
    ```
    """

    backbone_cls = GMLPVisionBackbone
    preprocessor_cls = GMLPImageClassifierPreprocessor

    def __init__(self, backbone, num_classes, preprocessor=None, dropout=0.0, head_dtype=None,
                 **kwargs):
        kwargs.pop("keras_gmlp_version", None)
        check_backbone(type(self), backbone, GMLPVisionBackbone, "images in, patch tokens out")
        validation.check_positive_int("num_classes", num_classes)
        validation.check_rate("dropout", dropout)
        check_task_kwargs(type(self), kwargs)
        policy = self._head_policy(head_dtype, backbone.dtype_policy)
        _fit_preprocessor_to_backbone(preprocessor, backbone)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.pooler = MaskedMeanPooling(dtype=policy, name="pooler")
        self.head_dropout = keras.layers.Dropout(dropout, dtype=policy, name="head_dropout")
        self.head = keras.layers.Dense(num_classes, dtype=policy, name="head")
        images = backbone.input
        logits = self.head(self.head_dropout(self.pooler(backbone(images))))
        # keras-hub's ImageClassifier.__init__ would build a 2-D pooling head; skip to Task's.
        keras_hub.models.Task.__init__(self, inputs=images, outputs=float32_logits(logits), **kwargs)
        resolve_policy_maps(self)
        self.num_classes = num_classes
        self.dropout = dropout

    def get_config(self):
        # keras_hub.models.Task.get_config; ImageClassifier's adds pooling/activation we lack.
        config = self._task_config(keras_hub.models.Task.get_config(self))
        return {**config, "num_classes": self.num_classes, "dropout": self.dropout}

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """`keras.Model.compile` with keras_gmlp's recipe: AdamW(1e-3, weight decay 0.05, none
        on LayerNorm and biases), sparse cross-entropy on logits and accuracy."""
        if optimizer == "auto":
            optimizer = recipe.task_optimizer("image_classifier")
        if loss == "auto":
            loss = recipe.classification_loss()
        if metrics == "auto":
            metrics = recipe.accuracy_metrics()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)


def _fit_preprocessor_to_backbone(preprocessor, backbone):
    """Sizes the image converter for the backbone's `image_shape`.

    A preset loaded at another resolution (`from_preset(dir, image_shape=...)`) brings its
    preprocessor at the saved size, which the backbone's fixed input cannot take; keras-hub's
    loader does not forward `image_shape` to it. A converter with no size yet is left as is.
    """
    converter = getattr(preprocessor, "image_converter", None)
    size = tuple(backbone.image_shape[:2])
    if converter is not None and converter.image_size is not None \
            and tuple(converter.image_size) != size:
        preprocessor.image_size = size
