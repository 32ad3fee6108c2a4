"""Export size and single-request latency of exported keras_gmlp models, as a server sees them.

Run as a file (not with -m, which would import keras_gmlp and so Keras):

    python benchmarks/measure_latency.py --out /tmp/gmlp_latency

It exports random-weight models in a child process (which needs keras_gmlp),
then loads each SavedModel in another child process that blocks Keras,
keras-hub and keras_gmlp, imports only TensorFlow and registers
tensorflow-text's op libraries (as a model server links them), and times
`--calls` single-example calls of every signature after `--warmup` calls.

Measured models: gmlp_ti16_224 (1000 classes) and gmlp_tiny (masked LM
with a WordPiece vocabulary of `--vocabulary_size` tokens learned from
CPython's bundled documentation, pydoc_data.topics).
"""

import argparse
import json
import os
import subprocess
import sys

# Run as a file, this directory leads sys.path; its modules (text.py, image.py, ...) must not
# shadow top-level modules of the same names.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def _export(out, vocabulary_size):
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf
    from pydoc_data.topics import topics

    from keras_gmlp.export import export_model
    from keras_gmlp.models import GMLPImageClassifier
    from keras_gmlp.models import GMLPMaskedLM

    keras.utils.set_random_seed(0)
    image = GMLPImageClassifier.from_preset("gmlp_ti16_224", num_classes=1000)
    paths = {"gmlp_ti16_224": export_model(image, os.path.join(out, "gmlp_ti16_224"))}
    lines = [line for text in topics.values() for line in text.splitlines() if line.strip()]
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(lines).batch(1000), vocabulary_size,
        lowercase=True, reserved_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary, lowercase=True)
    mlm = GMLPMaskedLM.from_preset("gmlp_tiny", vocabulary_size=len(vocabulary))
    paths["gmlp_tiny_mlm"] = export_model(mlm, os.path.join(out, "gmlp_tiny_mlm"),
                                          tokenizer=tokenizer)
    # Document-length inputs for the text model: the full 128 tokens, 1 mask.
    rng = np.random.default_rng(0)
    sentence = " ".join(lines[100:140]).split()[:90]
    sentence[10] = "[MASK]"
    inputs = {
        "gmlp_ti16_224": {
            "serving_default": {"images": rng.uniform(0, 255, (1, 224, 224, 3)).astype("float32")},
            "predict_image_bytes": {"image_bytes": [tf.io.encode_jpeg(
                tf.constant(rng.integers(0, 256, (224, 224, 3)), tf.uint8)).numpy()]},
        },
        "gmlp_tiny_mlm": {
            "serving_default": {
                "token_ids": rng.integers(5, len(vocabulary), (1, 128)).astype("int32"),
                "padding_mask": np.ones((1, 128), "int32"),
                "mask_positions": np.array([[10]], "int32"),
            },
            "predict_text": {"text": [" ".join(sentence).encode()]},
        },
    }
    return paths, inputs, len(vocabulary)


def _measure(paths, inputs, calls, warmup):
    import glob
    import importlib.util
    import statistics
    import time

    for name in ("keras", "keras_hub", "keras_nlp", "keras_gmlp", "tf_keras"):
        sys.modules[name] = None
    import tensorflow as tf

    ops_dir = os.path.join(
        importlib.util.find_spec("tensorflow_text").submodule_search_locations[0], "python", "ops"
    )
    for library in sorted(glob.glob(os.path.join(ops_dir, "_*.so"))):
        tf.load_op_library(library)
    report = {}
    for model, path in paths.items():
        size = sum(
            os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(path)
            for f in files
        )
        start = time.perf_counter()
        loaded = tf.saved_model.load(path)
        report[model] = {"path": path, "size_bytes": size,
                         "load_s": round(time.perf_counter() - start, 3), "latency_ms": {}}
        for signature, feed in inputs[model].items():
            fn = loaded.signatures[signature]
            feed = {k: tf.constant(v) for k, v in feed.items()}
            for _ in range(warmup):
                fn(**feed)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                outputs = fn(**feed)
                [v.numpy() for v in outputs.values()]
                times.append(time.perf_counter() - start)
            # On a shared machine the median includes waiting for a core; the minimum is the
            # closest to the uncontended latency.
            report[model]["latency_ms"][signature] = {
                "median": round(1000 * statistics.median(times), 3),
                "min": round(1000 * min(times), 3),
                "p90": round(1000 * sorted(times)[int(0.9 * len(times))], 3),
            }
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for the exports and report.json")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--vocabulary_size", type=int, default=8000)
    parser.add_argument("--stage", choices=["all", "export", "measure"], default="all")
    args = parser.parse_args()
    plan = os.path.join(args.out, "plan.pkl")
    import pickle

    if args.stage == "export":
        paths, inputs, vocabulary_size = _export(args.out, args.vocabulary_size)
        with open(plan, "wb") as f:
            pickle.dump(dict(paths=paths, inputs=inputs, vocabulary_size=vocabulary_size), f)
    elif args.stage == "measure":
        with open(plan, "rb") as f:
            spec = pickle.load(f)
        report = _measure(spec["paths"], spec["inputs"], args.calls, args.warmup)
        report["gmlp_tiny_mlm"]["vocabulary_size"] = spec["vocabulary_size"]
        report["settings"] = dict(calls=args.calls, warmup=args.warmup, batch=1,
                                  cpu_count=os.cpu_count(), load_average=os.getloadavg())
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        print(json.dumps(report, indent=2))
    else:
        os.makedirs(args.out, exist_ok=True)
        for stage in ("export", "measure"):
            # Separate processes: the measuring one must never have imported Keras.
            subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                            "--stage", stage], check=True)


if __name__ == "__main__":
    main()
