"""absl flags shared by the trainers and their start-up validators (definitions only).

Flags are defined on a `FlagValues` by functions (not at import), so that importing several
trainer modules in one process never redefines a flag; each trainer's entry point defines the
groups it needs on `absl.flags.FLAGS` and registers the validators before `app.run` parses argv.
Every validator runs while argv is parsed, before a model is built or a record is read, and its
message names the flag, the value and what was expected.
"""

import ast
import math
import os
import re

from absl import flags

TEXT = "text"
VISION = "vision"
# The preset each kind of trainer uses when --model is unset (its Task's `default_model`).
DEFAULT_MODELS = {TEXT: "gmlp_tiny", VISION: "gmlp_tiny4_32"}
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu",
              "data_parallel", "model_parallel")
# What each backend runs (trainers.core.strategy for TensorFlow, trainers.core.jax_loop for JAX).
TF_STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
JAX_STRATEGIES = ("default", "one_device", "data_parallel", "model_parallel", "tpu")
FLOAT32_MAX = 3.4028234663852886e38


def define_common_flags(fv=flags.FLAGS):
    """Flags every trainer takes: model, schedule, optimizer, strategy, checkpoints, logging."""
    flags.DEFINE_string(
        "model", None, "Preset name (keras_gmlp.models.TEXT_PRESETS / VISION_PRESETS); "
        "each trainer has a small default.", flag_values=fv)
    flags.DEFINE_string(
        "model_overrides", "", "Comma-separated key=value constructor overrides of the preset's "
        "backbone, values as Python literals, e.g. 'num_layers=2,hidden_dim=64,dropout=0.1'.",
        flag_values=fv)
    flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries, flags, vocab.",
                        flag_values=fv)
    flags.DEFINE_integer("train_steps", 1000, "Total optimizer steps.", flag_values=fv)
    flags.DEFINE_integer("global_batch_size", 32, "Examples per step over all replicas.",
                         flag_values=fv)
    flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (after warmup).",
                       flag_values=fv)
    flags.DEFINE_integer("warmup_steps", 100, "Linear warmup steps from 0 to --learning_rate.",
                         flag_values=fv)
    flags.DEFINE_enum("decay", "linear", ["linear", "cosine", "constant"],
                      "Learning-rate decay after warmup, down to --end_learning_rate_ratio.",
                      flag_values=fv)
    flags.DEFINE_float("end_learning_rate_ratio", 0.0,
                       "Final learning rate as a fraction of --learning_rate.", flag_values=fv)
    flags.DEFINE_float("weight_decay", 0.01, "AdamW decoupled weight decay (not applied to "
                       "LayerNorm scales/offsets or biases).", flag_values=fv)
    flags.DEFINE_float("adam_beta_1", 0.9, "AdamW beta_1.", flag_values=fv)
    flags.DEFINE_float("adam_beta_2", 0.999, "AdamW beta_2.", flag_values=fv)
    flags.DEFINE_float("adam_epsilon", 1e-6, "AdamW epsilon.", flag_values=fv)
    flags.DEFINE_float("global_clipnorm", 1.0, "Clip gradients by their global norm over all "
                       "replicas; 0 disables.", flag_values=fv)
    flags.DEFINE_enum("mixed_precision", "float32", ["float32", "mixed_bfloat16"],
                      "Keras dtype policy (bfloat16 needs no loss scaling).", flag_values=fv)
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES),
                      "TensorFlow backend: a tf.distribute strategy (multi_worker_mirrored reads "
                      "TF_CONFIG). KERAS_BACKEND=jax: default/one_device (one device), "
                      "data_parallel (keras.distribution.DataParallel over every device), "
                      "model_parallel (ModelParallel with the backbone's get_layout_map) or tpu "
                      "(DataParallel over the TPU devices JAX sees).", flag_values=fv)
    flags.DEFINE_integer("model_parallel_size", 0, "KERAS_BACKEND=jax, --strategy="
                         "model_parallel: devices along the mesh's 'model' axis (the rest form "
                         "the 'batch' axis); 0 uses every device of one host.", flag_values=fv)
    flags.DEFINE_string("tpu", None, "TPU name, grpc://IP:8470, or 'local' (on a TPU VM); "
                        "required with --strategy=tpu.", flag_values=fv)
    flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into this many logical devices "
                         "(e.g. 2 to try --strategy=mirrored on a laptop); 0 leaves it as is.",
                         flag_values=fv)
    flags.DEFINE_bool("multi_host", False, "KERAS_BACKEND=jax: join every process of a "
                      "multi-host TPU slice into one program: keras.distribution.initialize() "
                      "(jax.distributed.initialize) runs first. Pass it on every host; on "
                      "Cloud TPU JAX finds the other hosts itself, elsewhere set "
                      "KERAS_DISTRIBUTION_JOB_ADDRESSES=<process 0's host:port>, "
                      "KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID in "
                      "each process. With --per_worker_input each process reads only its share "
                      "of every global batch.", flag_values=fv)
    flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every N steps (and at the "
                         "end).", flag_values=fv)
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in --model_dir.",
                         flag_values=fv)
    flags.DEFINE_integer("eval_every", 0, "Evaluate every N steps; 0 evaluates at the end only.",
                         flag_values=fv)
    flags.DEFINE_integer("eval_steps", 20, "Batches per evaluation; 0 reads the whole split.",
                         flag_values=fv)
    flags.DEFINE_integer("log_every", 50, "Progress line, summaries and metrics.jsonl every N "
                         "steps.", flag_values=fv)
    flags.DEFINE_string("export_dir", None, "Write a SavedModel under EXPORT_DIR/<version>/ at "
                        "the end.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed for weights, data order and masking.", flag_values=fv)
    flags.DEFINE_string("data", None, "Training data source (see the trainer's --help); "
                        "unset uses the trainer's default dataset.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TFDS data_dir for tfds: sources (read offline).",
                        flag_values=fv)
    flags.DEFINE_bool("checkpoint_iterator", True, "Save the tf.data iterator position in "
                      "checkpoints (where the strategy allows) so a resumed run sees the same "
                      "batches; otherwise a resumed run skips the batches already used.",
                      flag_values=fv)
    flags.DEFINE_integer("steps_per_loop", 100, "Training steps per tf.function call (one "
                         "host round trip per loop, as Orbit's StandardTrainer). Loops also end "
                         "at every --log_every, --checkpoint_every and --eval_every step.",
                         flag_values=fv)
    flags.DEFINE_bool("per_worker_input", True, "With several workers, each reads and "
                      "preprocesses only its share of every global batch (and checkpoints its "
                      "own iterator); otherwise every worker reads whole global batches.",
                      flag_values=fv)
    flags.DEFINE_integer("max_recoveries", 3, "On a non-finite loss or gradient norm: restore "
                         "the newest finite checkpoint, skip the input batches since it (logged, "
                         "and kept in MODEL_DIR/recoveries.json) and go on, up to N times per "
                         "process; 0 stops at the first one (exit code 3).", flag_values=fv)
    flags.DEFINE_bool("deterministic", False, "tf.config.experimental.enable_op_determinism().",
                      flag_values=fv)


def define_text_flags(fv=flags.FLAGS):
    """Tokenisation flags of the text trainers."""
    flags.DEFINE_integer("sequence_length", None, "Tokens per example; unset keeps the "
                         "preset's.", flag_values=fv)
    flags.DEFINE_string("vocab_file", None, "WordPiece vocabulary, one token a line; unset "
                        "learns one from the training text into MODEL_DIR/vocab.txt.",
                        flag_values=fv)
    flags.DEFINE_integer("vocabulary_size", 8000, "Size of a learned vocabulary.",
                         flag_values=fv)
    flags.DEFINE_bool("lowercase", True, "Lowercase text before WordPiece.", flag_values=fv)
    flags.DEFINE_string("eval_data", None, "Evaluation source; unset uses the --data source's "
                        "evaluation split.", flag_values=fv)


def define_mlm_flags(fv=flags.FLAGS):
    """Masked-LM flags."""
    flags.DEFINE_float("mask_rate", 0.15, "Fraction of tokens selected for prediction "
                       "(80% [MASK], 10% random, 10% kept).", flag_values=fv)
    flags.DEFINE_integer("max_predictions", None, "Mask slots per sequence; unset uses "
                         "ceil(mask_rate * sequence_length).", flag_values=fv)


def define_finetune_flags(fv=flags.FLAGS):
    """Text-classification fine-tuning flags."""
    flags.DEFINE_string("init_checkpoint", None, "A pretrain_mlm --model_dir (its latest "
                        "checkpoint), a checkpoint prefix, or a keras-hub preset directory "
                        "of a GMLPBackbone with its tokenizer (e.g. a pretraining run's "
                        "MODEL_DIR/preset); the backbone, vocabulary and backbone config are "
                        "taken from it.", flag_values=fv)
    flags.DEFINE_integer("num_classes", 2, "Number of labels.", flag_values=fv)
    flags.DEFINE_float("classifier_dropout", 0.1, "Dropout before the classification layer.",
                       flag_values=fv)
    flags.DEFINE_string("eval_split", "validation", "Evaluation split of a tfds: source.",
                        flag_values=fv)


def define_image_flags(fv=flags.FLAGS):
    """Image-classification flags."""
    flags.DEFINE_integer("image_size", None, "Square training/eval resolution; unset uses the "
                         "dataset's native size for the default data, else the preset's.",
                         flag_values=fv)
    flags.DEFINE_integer("num_classes", None, "Number of labels; unset reads it from the data.",
                         flag_values=fv)
    flags.DEFINE_string("eval_split", "test", "Evaluation split of --eval_data (or of --data when "
                        "unset): a folder's SPLIT directory, an IDX or TFDS split, or the "
                        "{split} of a TFRecord glob.", flag_values=fv)
    flags.DEFINE_string("eval_data", None, "Evaluation source (same forms as --data); unset "
                        "evaluates on --eval_split of --data. Evaluation never reads training "
                        "data: a TFRecord --data without a {split} placeholder needs this flag.",
                        flag_values=fv)
    flags.DEFINE_integer("image_channels", None, "1 or 3; unset uses the data's (1 for "
                         "grayscale sources).", flag_values=fv)
    flags.DEFINE_float("eval_crop_fraction", None, "Centre crop of evaluation and exported "
                       "images, a fraction of the shorter side; unset: 0.875 from 128 pixels "
                       "up, else 1.0 (keras_gmlp.data.image_preprocessing).", flag_values=fv)
    flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.", flag_values=fv)
    flags.DEFINE_float("mixup_alpha", 0.0, "MixUp alpha; 0 disables.", flag_values=fv)
    flags.DEFINE_float("cutmix_alpha", 0.0, "CutMix alpha; 0 disables.", flag_values=fv)
    flags.DEFINE_bool("random_resized_crop", False, "Random-resized-crop augmentation.",
                      flag_values=fv)
    flags.DEFINE_bool("random_flip", False, "Horizontal-flip augmentation.", flag_values=fv)
    flags.DEFINE_integer("randaugment_layers", 0, "RandAugment ops per image; 0 disables.",
                         flag_values=fv)
    flags.DEFINE_float("classifier_dropout", 0.0, "Dropout before the classification layer.",
                       flag_values=fv)
    flags.register_multi_flags_validator(
        ["data", "eval_data", "eval_split", "data_dir", "image_channels", "eval_crop_fraction"],
        _check_image_eval_flags, flag_values=fv)


def image_eval_source(data, eval_data, eval_split, data_dir=None):
    """(source, split) that the image trainer evaluates on; ValueError naming the flags when it
    would read any training example of --data (or cannot be read as a held-out split)."""
    from keras_gmlp.data import images  # lazily: TensorFlow is slow to import for --help

    source = eval_data or data
    split = eval_split
    kind, rest = images.source_kind(source)
    if eval_data and kind == "tfrecord" and images.SPLIT_PLACEHOLDER not in rest:
        split = "train"  # a plain glob given for evaluation is read whole
    where = f"--data={data!r}, --eval_data={eval_data!r}, --eval_split={eval_split!r}"
    try:
        overlap = images.data_identity(source, split, data_dir) & images.data_identity(data, "train", data_dir)
    except ValueError as error:
        raise ValueError(f"{where}: {error} Pass --eval_data=HELD_OUT_SOURCE.") from error
    if overlap:
        raise ValueError(f"{where}: evaluation would read training data ({len(overlap)} shared item(s), "
                         f"e.g. {sorted(overlap)[0]!r}); pass --eval_data with held-out examples or "
                         "another --eval_split.")
    return source, split


def _check_image_eval_flags(values):
    if values["image_channels"] not in (None, 1, 3):
        raise flags.ValidationError(f"--image_channels={values['image_channels']}: expected 1 or 3.")
    crop = values["eval_crop_fraction"]
    if crop is not None and not 0 < crop <= 1:
        raise flags.ValidationError(f"--eval_crop_fraction={crop}: expected a float in (0, 1].")
    try:
        image_eval_source(values["data"], values["eval_data"], values["eval_split"], values["data_dir"])
    except ValueError as error:
        raise flags.ValidationError(str(error)) from error
    return True


def parse_overrides(text):
    """Parses 'a=1,b=(8, 8, 1),c=gelu' into a dict; values are Python literals or strings.

    Commas inside brackets belong to the value. Raises ValueError naming the bad item.
    """
    overrides = {}
    if not text or not text.strip():
        return overrides
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise ValueError(f"item {item!r} is not key=value")
        try:
            overrides[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key] = value.strip()
    return overrides


def _backbone_class(kind):
    # Imported lazily: keras_gmlp imports TensorFlow, which `--help` should not wait for.
    from keras_gmlp import models

    if kind == VISION:
        return models.GMLPVisionBackbone, models.VISION_PRESETS
    return models.GMLPBackbone, models.TEXT_PRESETS


def register_validators(kind, fv=flags.FLAGS):
    """Registers the start-up checks for a trainer of `kind` ("text" or "vision") on `fv`."""

    def check(name, predicate, expected):
        if name in fv:
            flags.register_validator(
                name, predicate, message=f"--{name}: expected {expected}", flag_values=fv)

    check("model_dir", lambda v: bool(v and v.strip()) and _writable_dir(v),
          "a directory path (required) that can be created and written (not a file, nor under "
          "one)")
    check("train_steps", lambda v: v is not None and v >= 1, "an integer >= 1")
    check("global_batch_size", lambda v: v is not None and v >= 1, "an integer >= 1")
    # float32 is what the schedule and optimizer compute in: 1e39 would be inf there.
    check("learning_rate", lambda v: _finite(v) and 0 <= v <= FLOAT32_MAX,
          f"a finite float in [0, {FLOAT32_MAX:.4g}]")
    check("warmup_steps", lambda v: v is not None and v >= 0, "an integer >= 0")
    check("end_learning_rate_ratio", lambda v: 0 <= v <= 1, "a float in [0, 1]")
    check("weight_decay", lambda v: _finite(v) and v >= 0, "a finite float >= 0")
    check("adam_beta_1", lambda v: 0 <= v < 1, "a float in [0, 1)")
    check("adam_beta_2", lambda v: 0 <= v < 1, "a float in [0, 1)")
    check("adam_epsilon", lambda v: _finite(v) and v > 0, "a finite float > 0")
    check("global_clipnorm", lambda v: _finite(v) and v >= 0,
          "a finite float >= 0 (0 disables clipping)")
    check("num_cpu_devices", lambda v: v >= 0, "an integer >= 0")
    check("model_parallel_size", lambda v: v >= 0, "an integer >= 0 (0: every device of one "
          "host)")
    check("checkpoint_every", lambda v: v >= 1, "an integer >= 1")
    check("keep_checkpoints", lambda v: v >= 1, "an integer >= 1")
    check("eval_every", lambda v: v >= 0, "an integer >= 0")
    check("eval_steps", lambda v: v >= 0, "an integer >= 0")
    check("log_every", lambda v: v >= 1, "an integer >= 1")
    check("max_recoveries", lambda v: v is not None and v >= 0, "an integer >= 0 (0 stops at "
          "the first non-finite loss)")
    check("steps_per_loop", lambda v: v is not None and v >= 1, "an integer >= 1")
    check("seed", lambda v: 0 <= v < 2**31, "an integer in [0, 2**31) (TensorFlow's seeds "
          "are int32)")
    check("export_dir", _writable_dir, "a directory that can be created and written (not a "
          "file, nor under one)")
    check("sequence_length", lambda v: v is None or v >= 4, "an integer >= 4")
    check("vocabulary_size", lambda v: v >= 16, "an integer >= 16")
    check("vocab_file", lambda v: v is None or _gfile().exists(v), "an existing file")
    check("mask_rate", lambda v: 0 < v < 1, "a float in (0, 1)")
    check("max_predictions", lambda v: v is None or v >= 1, "an integer >= 1")
    check("num_classes", lambda v: v is None or v >= 2, "an integer >= 2")
    check("image_size", lambda v: v is None or v >= 1, "an integer >= 1")
    check("label_smoothing", lambda v: 0 <= v < 1, "a float in [0, 1)")
    check("mixup_alpha", lambda v: _finite(v) and v >= 0, "a finite float >= 0")
    check("cutmix_alpha", lambda v: _finite(v) and v >= 0, "a finite float >= 0")
    check("randaugment_layers", lambda v: v >= 0, "an integer >= 0")
    check("classifier_dropout", lambda v: 0 <= v < 1, "a float in [0, 1)")
    check("data", _local_source_exists, "a tfds:NAME / tfrecord:GLOB / idx:DIR source or a path "
          "or glob that matches files")
    check("eval_data", _local_source_exists, "a tfds:NAME / tfrecord:GLOB source or a path or "
          "glob that matches files")
    check("init_checkpoint", _checkpoint_exists,
          "a pretrain_mlm model_dir holding a checkpoint, an existing checkpoint prefix, or a "
          "keras-hub preset directory (config.json, metadata.json, model.weights.h5)")

    def check_many(names, checker):
        if all(name in fv for name in names):
            flags.register_multi_flags_validator(names, checker, flag_values=fv)

    def strategy_fits_backend(value):
        backend = _keras_backend()
        allowed = JAX_STRATEGIES if backend == "jax" else TF_STRATEGIES
        if backend in ("jax", "tensorflow") and value not in allowed:
            raise flags.ValidationError(
                f"--strategy={value}: expected one of {list(allowed)} with "
                f"KERAS_BACKEND={backend}")
        return True

    if "strategy" in fv:
        flags.register_validator("strategy", strategy_fits_backend, flag_values=fv)

    def tpu_needs_name(values):
        # JAX finds the TPU chips itself; tf.distribute's resolver needs a name.
        if (values["strategy"] == "tpu" and not values["tpu"]
                and _keras_backend() == "tensorflow"):
            raise flags.ValidationError(
                "--tpu: required with --strategy=tpu (a TPU name, grpc://IP:8470, or 'local')")
        return True

    def warmup_within_training(values):
        if values["warmup_steps"] > values["train_steps"]:
            raise flags.ValidationError(
                f"--warmup_steps={values['warmup_steps']}: expected <= "
                f"--train_steps={values['train_steps']}")
        return True

    def model_and_overrides(values):
        cls, presets = _backbone_class(kind)
        if values["model"] is not None and values["model"] not in presets:
            raise flags.ValidationError(
                f"--model={values['model']!r}: expected one of {sorted(presets)}")
        try:
            overrides = parse_overrides(values["model_overrides"])
        except ValueError as error:
            raise flags.ValidationError(f"--model_overrides: {error}") from None
        if "dtype" in overrides:
            raise flags.ValidationError(
                f"--model_overrides: dtype={overrides['dtype']!r}: expected no dtype; "
                "--mixed_precision sets the dtype policy")
        arguments = dict(presets[values["model"] or DEFAULT_MODELS[kind]], **overrides)
        patch = arguments.get("patch_size")
        if "image_shape" in arguments and "image_shape" not in overrides and (
                isinstance(patch, int) and patch > 0):
            # The resolution comes from --image_size or the data, and the trainer checks it
            # against the patch size once it knows it; only the other arguments are judged here.
            arguments["image_shape"] = (patch, patch, arguments["image_shape"][2])
        try:
            cls.validate_arguments(**arguments)
        except (ValueError, TypeError) as error:
            raise flags.ValidationError(f"--model_overrides: {error}") from None
        return True

    check_many(["strategy", "tpu"], tpu_needs_name)
    check_many(["warmup_steps", "train_steps"], warmup_within_training)
    check_many(["model", "model_overrides"], model_and_overrides)


def _finite(value):
    return value is not None and math.isfinite(value)


def _writable_dir(value):
    """True if `value` is None, or a directory that exists or could be made, and written."""
    if value is None or "://" in value:
        return True  # gs:// and other remote file systems are checked when written
    path = os.path.abspath(value)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _keras_backend():
    # KERAS_BACKEND decides before keras is imported; keras.backend.backend() reports it after.
    import keras

    return keras.backend.backend()


def _gfile():
    # tf.io.gfile reads local paths and gs:// alike; imported late for a fast --help.
    import tensorflow as tf

    return tf.io.gfile


def _local_source_exists(value):
    if value is None or value == "fashion_mnist" or value.startswith(("tfds:", "tfrecord:", "idx:")):
        return True  # checked by the data pipeline
    return bool(_gfile().glob(value))


def _checkpoint_exists(value):
    if value is None:
        return True
    if _gfile().isdir(value):
        if _gfile().exists(os.path.join(value, "config.json")):  # a keras-hub preset
            return all(_gfile().exists(os.path.join(value, name))
                       for name in ("metadata.json", "model.weights.h5"))
        return bool(_gfile().glob(os.path.join(value, "ckpt-*.index")))
    return _gfile().exists(value + ".index")


def flag_dict(fv=flags.FLAGS, module_names=None):
    """The trainer's flags (not absl's own) as {name: value}."""
    values = {}
    for module, module_flags in fv.flags_by_module_dict().items():
        if module_names is not None and module not in module_names:
            continue
        for flag in module_flags:
            values[flag.name] = flag.value
    return values
