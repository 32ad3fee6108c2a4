"""Report of the quality benchmark: mean and standard deviation over seeds, tables, rankings, plot.

Rows (one per section, model, seed) carry `ppl` (masked LM, lower is better) or `top1`
(classification, higher is better). A ranking sentence says "A is better than B" only when
the difference of the means exceeds twice the pooled standard deviation of the two models' runs
(sqrt of the mean of the two sample variances); otherwise it says "within noise".
"""

import math

SECTION_TITLES = {
    "mlm": "Masked LM on BBC News (held-out perplexity, lower is better)",
    "finetune": "BBC News topic classification, fine-tuned (held-out top-1, higher is better)",
    "image": "Fashion-MNIST (held-out top-1 on the 10,000 test images, higher is better)",
    "ablation": "Ablation miniature, masked LM on BBC News (held-out perplexity, lower is better)",
}
SECTION_ORDER = ("mlm", "finetune", "image", "ablation")


def metric_name(section):
    return "ppl" if section in ("mlm", "ablation") else "top1"


def _mean_std(values):
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(rows):
    """{section: [{model, n, mean, std, params, train_s}]} in the rows' model order."""
    out = {}
    for section in SECTION_ORDER:
        models = []
        for row in rows:
            if row["section"] == section and row["model"] not in models:
                models.append(row["model"])
        summary = []
        for model in models:
            runs = [r for r in rows if r["section"] == section and r["model"] == model]
            mean, std = _mean_std([r[metric_name(section)] for r in runs])
            summary.append(dict(model=model, n=len(runs), mean=mean, std=std, params=runs[0]["params"],
                                train_s=sum(r["train_s"] for r in runs) / len(runs)))
        if summary:
            out[section] = summary
    return out


def compare(a, b, lower_is_better):
    """A sentence ranking summaries `a` and `b` (dicts of `summarize`) by the 2-sigma rule."""
    difference = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return f"{a['model']} vs {b['model']}: not ranked (one run of one of them, no spread measured)"
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    if abs(difference) <= 2 * pooled:
        return (f"{a['model']} vs {b['model']}: within noise (difference {difference:+.4g}, "
                f"2 pooled std {2 * pooled:.3g})")
    better = (difference < 0) == lower_is_better
    winner, loser = (a, b) if better else (b, a)
    return (f"{winner['model']} is better than {loser['model']} (difference {abs(difference):.4g} > "
            f"2 pooled std {2 * pooled:.3g})")


COMPARISONS = {
    "mlm": [("gmlp", "bert"), ("gmlp_large", "gmlp"), ("gmlp", "unigram")],
    "finetune": [("gmlp_pretrained", "bert_pretrained"), ("gmlp_pretrained", "gmlp_scratch"),
                 ("bert_pretrained", "bert_scratch"), ("gmlp_large_pretrained", "bert_pretrained"),
                 ("gmlp_large_pretrained", "gmlp_pretrained"), ("gmlp_scratch", "bert_scratch")],
    "image": [("gmlp", "vit"), ("gmlp", "mixer"), ("vit", "mixer")],
    "ablation": [("split", "multiplicative"), ("multiplicative", "additive"), ("additive", "linear"),
                 ("linear", "mixer"), ("split", "mixer")],
}


def rankings(summary):
    """{section: [sentence]} for the standard comparisons of models present in `summary`."""
    out = {}
    for section, pairs in COMPARISONS.items():
        by_model = {s["model"]: s for s in summary.get(section, [])}
        sentences = [compare(by_model[a], by_model[b], metric_name(section) == "ppl")
                     for a, b in pairs if a in by_model and b in by_model]
        if sentences:
            out[section] = sentences
    return out


def markdown(rows, header, notes):
    """The report: `header`, then per section its `notes[section]` line, a table of mean +- std
    over seeds, and the ranking sentences."""
    summary = summarize(rows)
    ranks = rankings(summary)
    lines = [header, ""]
    for section, models in summary.items():
        metric = metric_name(section)
        lines += [f"### {SECTION_TITLES[section]}", ""]
        if notes.get(section):
            lines += [notes[section], ""]
        lines += [f"| model | params | {metric} mean | std | seeds | train s (mean) |", "|---|---|---|---|---|---|"]
        for s in models:
            value = f"{s['mean']:.2f}" if metric == "ppl" else f"{s['mean']:.4f}"
            std = "-" if not math.isfinite(s["std"]) else (f"{s['std']:.2f}" if metric == "ppl" else f"{s['std']:.4f}")
            lines.append(f"| {s['model']} | {s['params']:,} | {value} | {std} | {s['n']} | {s['train_s']:.0f} |")
        lines.append("")
        lines += [f"- {sentence}" for sentence in ranks.get(section, [])]
        lines.append("")
    return "\n".join(lines)


def plot(rows, path):
    """Learning curves (held-out metric against steps), mean across seeds with a min-max band,
    one panel per section; the unigram perplexity is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sections = [s for s in SECTION_ORDER if any(r["section"] == s and r.get("curve") for r in rows)]
    if not sections:
        return
    columns = 2 if len(sections) > 2 else len(sections)
    rows_ = (len(sections) + columns - 1) // columns
    fig, axes = plt.subplots(rows_, columns, figsize=(6.2 * columns, 4.4 * rows_), squeeze=False)
    for ax in axes.flat[len(sections):]:
        ax.set_visible(False)
    for ax, section in zip(axes.flat, sections):
        models = []
        for r in rows:
            if r["section"] == section and r["model"] not in models:
                models.append(r["model"])
        for model in models:
            runs = [r for r in rows if r["section"] == section and r["model"] == model]
            if model == "unigram":
                ax.axhline(runs[0]["ppl"], color="gray", linestyle="--", label="unigram")
                ax.axhline(runs[0]["ppl"] / 4, color="gray", linestyle=":", label="unigram / 4")
                continue
            curves = [r["curve"] for r in runs if r.get("curve")]
            length = min(len(c) for c in curves)
            steps = np.array([p[0] for p in curves[0][:length]])
            values = np.array([[p[1] for p in c[:length]] for c in curves])
            line, = ax.plot(steps, values.mean(0), marker=".", label=f"{model} (n={len(curves)})")
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        metric = metric_name(section)
        if metric == "ppl":
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out perplexity (log)" if metric == "ppl" else "held-out top-1")
        ax.set_title(SECTION_TITLES[section].split(" (")[0], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("quality benchmark: mean over seeds, band = min to max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
