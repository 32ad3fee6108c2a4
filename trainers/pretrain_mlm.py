"""BERT-style masked-LM pretraining of a gMLP / aMLP text backbone.

    python -m trainers.pretrain_mlm --model_dir=/tmp/mlm --model=gmlp_tiny --train_steps=1000

Data (--data): unset = CPython's pydoc_data.topics (installed with Python); a glob of plain-text
files (one example per line); "tfrecord:GLOB" (tf.train.Example, bytes feature "text"); or
"tfds:NAME[/CONFIG]" read offline from --data_dir. The WordPiece vocabulary is --vocab_file or
learned from the training text into MODEL_DIR/vocab.txt. Sequences are packed to
--sequence_length; --mask_rate of the tokens are selected, 80/10/10 [MASK]/random/kept. The run
ends by writing MODEL_DIR/preset (masked LM, preprocessor, tokenizer; keras-hub's
`MaskedLM.from_preset` and this project's fine-tuning `--init_checkpoint` read it).
See trainers/core/flags.py for every flag.
"""

import math

import keras
import tensorflow as tf
from keras import ops
from absl import app
from absl import flags
from absl import logging

from keras_gmlp import data
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPMaskedLM
from keras_gmlp.models import GMLPMaskedLMPreprocessor
from trainers.core import export
from trainers.core import flags as flags_lib
from trainers.core import loop
from trainers.core import text
from trainers.core.task import Task

# Sources with no splits (the default corpus, text files, TFRecords) hold out one example in
# HOLDOUT for evaluation, unless --eval_data names another source.
HOLDOUT = 20


class MaskedLMTask(Task):
    """Masked-LM pretraining: weighted cross-entropy over the mask slots."""

    default_model = flags_lib.DEFAULT_MODELS[flags_lib.TEXT]

    def prepare(self, model_dir, is_chief):
        fv = self.flags
        if fv.data is None:
            logging.info("No --data: pretraining on the default corpus, CPython's "
                         "pydoc_data.topics.")
        self.vocabulary = text.resolve_vocabulary(
            fv, model_dir, lambda: self._lines(fv.data, "train"))
        self.backbone_kwargs = text.backbone_kwargs(fv, len(self.vocabulary), self.default_model)
        self.sequence_length = self.backbone_kwargs["sequence_length"]
        self.tokenizer = text.make_tokenizer(self.vocabulary, fv.lowercase,
                                             text.vocabulary_source(fv))

    def write_run_files(self, model_dir):
        text.save_vocabulary(self.vocabulary, model_dir)

    def build_model(self):
        return GMLPMaskedLM(GMLPBackbone(**self.backbone_kwargs))

    def _lines(self, source, split):
        fv = self.flags
        if source and source.startswith("tfds:"):
            return data.text_lines(source, data_dir=fv.data_dir, split=split)
        lines = data.text_lines(source, data_dir=fv.data_dir)
        if source != fv.data:
            return lines  # a separate --eval_data source is used whole
        # Sources without splits: every HOLDOUT-th example is held out for evaluation.
        held_out = split != "train"

        def keep(index, line):
            return tf.equal(index % HOLDOUT == 0, held_out)

        return lines.enumerate().filter(keep).map(lambda index, line: line)

    def _dataset(self, source, split, batch_size, training, input_context=None):
        fv = self.flags
        lines = self._lines(source, split)
        return data.mlm_dataset(
            lines, self.tokenizer, self.sequence_length, batch_size, mask_rate=fv.mask_rate,
            max_predictions=fv.max_predictions, seed=fv.seed, shuffle=training, repeat=training,
            input_context=input_context)

    def train_dataset(self, batch_size, input_context=None):
        return self._dataset(self.flags.data, "train", batch_size, True, input_context)

    def eval_dataset(self, global_batch_size):
        fv = self.flags
        return self._dataset(fv.eval_data or fv.data, "validation", global_batch_size, False)

    def loss_terms(self, model, batch, training):
        x, mask_ids, mask_weights = batch
        logits = model(x, training=training)
        weights = ops.cast(mask_weights, "float32")
        losses = ops.cast(keras.losses.sparse_categorical_crossentropy(
            mask_ids, logits, from_logits=True), "float32")
        hits = ops.cast(ops.equal(ops.cast(ops.argmax(logits, -1), "int32"),
                                  ops.cast(mask_ids, "int32")), "float32")
        loss_sum = ops.sum(losses * weights)
        weight = ops.sum(weights)
        return loss_sum, weight, dict(loss_sum=loss_sum, weight=weight,
                                      correct=ops.sum(hits * weights))

    def metrics(self, sums):
        loss = sums["loss_sum"] / max(sums["weight"], 1e-12)
        return dict(loss=loss, accuracy=sums["correct"] / max(sums["weight"], 1e-12),
                    perplexity=math.exp(min(loss, 700.0)))

    def preprocessor(self):
        # For `fit` on raw strings: each string its own sequence, masked afresh (this run
        # packs its corpus into one token stream instead; see GMLPMaskedLMPreprocessor).
        fv = self.flags
        return GMLPMaskedLMPreprocessor(
            self.tokenizer, self.sequence_length, mask_selection_rate=fv.mask_rate,
            mask_selection_length=fv.max_predictions)

    def export(self, model, export_dir):
        return export.export(model, export_dir, tokenizer=self.tokenizer)


main = loop.main_for(MaskedLMTask)


def define_flags(fv=flags.FLAGS):
    flags_lib.define_common_flags(fv)
    flags_lib.define_text_flags(fv)
    flags_lib.define_mlm_flags(fv)
    flags_lib.register_validators(flags_lib.TEXT, fv)


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(flags_lib)  # --helpshort lists the shared flags too
    app.run(main)
