"""ImageNet-style classification with a gMLP vision backbone.

    python -m trainers.train_image_classifier --model_dir=/tmp/digits --train_steps=300

Data (--data): unset = scikit-learn's 8x8 digits (installed with the dependencies);
"tfds:NAME" (e.g. tfds:cifar10, tfds:imagenet2012) read offline from --data_dir; an image
folder root/split/label/*.jpg|png; "tfrecord:GLOB" (a {split} in the glob names the split);
"idx:DIR" or "fashion_mnist" (Debian's dataset-fashion-mnist). Augmentation:
--random_resized_crop, --random_flip, --randaugment_layers, --mixup_alpha, --cutmix_alpha,
--label_smoothing. Evaluation reports top-1 and top-5 accuracy on --eval_split of --eval_data
(default --data) and refuses to read training data; it prepares images exactly as the export's
predict_image_bytes does (keras_gmlp.data.image_preprocessing). See trainers/core/flags.py.
"""

import keras
import tensorflow as tf  # noqa: F401 (kept for the other parts of this module)
from keras import ops
from absl import app
from absl import flags
from absl import logging

from keras_gmlp import data
from keras_gmlp.data import image_preprocessing
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPImageClassifierPreprocessor
from keras_gmlp.models import GMLPImageConverter
from keras_gmlp.models import GMLPVisionBackbone
from keras_gmlp.models.presets import VISION_PRESETS
from keras_gmlp.models.presets import get_preset
from trainers.core import export
from trainers.core import flags as flags_lib
from trainers.core import loop
from trainers.core.task import Task


class ImageClassificationTask(Task):
    """Softmax cross-entropy on int or soft (MixUp/CutMix/label-smoothed) labels; top-1/top-5."""

    default_model = "gmlp_tiny4_32"

    def prepare(self, model_dir, is_chief):
        fv = self.flags
        if fv.data is None:
            logging.info("No --data: training on scikit-learn's 8x8 digits (10 classes).")
        # Checked again here for callers that bypass the flag validators.
        self.eval_source, self.eval_split = flags_lib.image_eval_source(
            fv.data, fv.eval_data, fv.eval_split, fv.data_dir)
        self.info = data.dataset_info(fv.data, split="train", data_dir=fv.data_dir,
                                      num_classes=fv.num_classes)
        kwargs = get_preset(fv.model or self.default_model, VISION_PRESETS)
        overrides = flags_lib.parse_overrides(fv.model_overrides)
        height, width, channels = self.info.image_shape
        if fv.image_size:
            height = width = fv.image_size
        elif "image_shape" in overrides or height is None:
            height, width = tuple(overrides.get("image_shape", kwargs["image_shape"]))[:2]
        kwargs.update(overrides)
        kwargs["image_shape"] = (height, width,
                                 fv.image_channels or channels or kwargs["image_shape"][2])
        if height % kwargs["patch_size"] or width % kwargs["patch_size"]:
            raise ValueError(
                f"--image_size / data resolution {height}x{width} is not a multiple of the "
                f"patch size {kwargs['patch_size']}; set --model_overrides=patch_size=... or "
                "--image_size.")
        self.backbone_kwargs = kwargs
        # The one preprocessing config of evaluation and export (travels in the export's metadata).
        self.preprocessing = image_preprocessing.preprocessing_config(
            kwargs["image_shape"], crop_fraction=fv.eval_crop_fraction)
        self.num_classes = self.info.num_classes
        logging.info("Images %s, %d classes, %d-pixel patches.", kwargs["image_shape"],
                     self.num_classes, kwargs["patch_size"])

    def build_model(self):
        return GMLPImageClassifier(GMLPVisionBackbone(**self.backbone_kwargs), self.num_classes,
                                   dropout=self.flags.classifier_dropout)

    def _dataset(self, source, split, batch_size, training, input_context=None):
        fv = self.flags
        height, width, channels = self.backbone_kwargs["image_shape"]
        augment = {"preprocessing": self.preprocessing}
        if training:
            augment = dict(
                random_resized_crop=fv.random_resized_crop, horizontal_flip=fv.random_flip,
                rand_augment=fv.randaugment_layers > 0,
                rand_augment_num_ops=max(fv.randaugment_layers, 1), mixup_alpha=fv.mixup_alpha,
                cutmix_alpha=fv.cutmix_alpha, label_smoothing=fv.label_smoothing)
        return data.image_dataset(
            source, split=split, image_size=(height, width), batch_size=batch_size,
            training=training, seed=fv.seed, data_dir=fv.data_dir, num_classes=self.num_classes,
            channels=channels, shuffle=training, repeat=training, drop_remainder=training,
            input_context=input_context, **augment)

    def train_dataset(self, batch_size, input_context=None):
        return self._dataset(self.flags.data, "train", batch_size, True, input_context)

    def eval_dataset(self, global_batch_size):
        return self._dataset(self.eval_source, self.eval_split, global_batch_size, False)

    def loss_terms(self, model, batch, training):
        images, labels = batch
        logits = model(images, training=training)
        if len(labels.shape) == 2:  # soft labels from MixUp / CutMix / label smoothing
            labels = ops.cast(labels, "float32")
            losses = keras.losses.categorical_crossentropy(labels, logits, from_logits=True)
            label_ids = ops.cast(ops.argmax(labels, -1), "int32")
        else:
            label_ids = ops.cast(labels, "int32")
            losses = keras.losses.sparse_categorical_crossentropy(
                label_ids, logits, from_logits=True)
        losses = ops.cast(losses, "float32")
        k = min(5, self.num_classes)
        top1 = ops.cast(ops.equal(ops.cast(ops.argmax(logits, -1), "int32"), label_ids),
                        "float32")
        top5 = ops.cast(ops.in_top_k(label_ids, ops.cast(logits, "float32"), k), "float32")
        loss_sum = ops.sum(losses)
        count = ops.cast(ops.shape(logits)[0], "float32")
        return loss_sum, count, dict(loss_sum=loss_sum, count=count,
                                     top1=ops.sum(top1), top5=ops.sum(top5))

    def metrics(self, sums):
        count = max(sums["count"], 1e-12)
        return dict(loss=sums["loss_sum"] / count, top1_accuracy=sums["top1"] / count,
                    top5_accuracy=sums["top5"] / count)

    def preprocessor(self):
        # The evaluation/export preprocessing, so `predict` on raw images or file bytes of
        # MODEL_DIR/preset gives the pixels this run evaluated.
        converter = GMLPImageConverter.from_preprocessing_config(self.preprocessing)
        return GMLPImageClassifierPreprocessor(image_converter=converter)

    def export(self, model, export_dir):
        return export.export(model, export_dir, label_names=list(self.info.label_names),
                             top_k=min(5, self.num_classes), preprocessing=self.preprocessing)


main = loop.main_for(ImageClassificationTask)


def define_flags(fv=flags.FLAGS):
    flags_lib.define_common_flags(fv)
    flags_lib.define_image_flags(fv)
    flags_lib.register_validators(flags_lib.VISION, fv)


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(flags_lib)  # --helpshort lists the shared flags too
    app.run(main)
