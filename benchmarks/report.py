"""Printing the results table, checking the targets, writing JSON, Markdown and a PNG chart."""

import json
import os


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def throughput_table(rows):
    """Markdown table of the vision and text rows."""
    lines = [
        "| section | model | framework | policy | batch | mode | throughput | step ms (median) | GFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["section"] not in ("vision", "text"):
            continue
        lines.append(
            f"| {r['section']} | {r['model']} | {r['framework']} | {r['policy']} | {r['batch']} | "
            f"{r['mode']} | {r['throughput']:.1f} {r['unit']} | {r['step_ms']:.0f} | "
            f"{r['gflops']:.0f} | {_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.0f')}% |"
        )
    return "\n".join(lines)


def ceiling_table(ceiling):
    lines = ["| dtype | ceiling used for MFU, GFLOP/s | at start (size: GFLOP/s) | at end (size: GFLOP/s) |",
             "|---|---|---|---|"]
    for dtype, c in ceiling.items():
        start = ", ".join(f"{r['size']}: {r['gflops_median']:.0f}" for r in c["runs"])
        end = ", ".join(f"{r['size']}: {r['gflops_median']:.0f}" for r in c.get("runs_end", []))
        lines.append(f"| {dtype} | {c['gflops']:.0f} | {start} | {end or '-'} |")
    return "\n".join(lines)


def scaling_table(rows):
    lines = [
        "| n | d_ffn | batch | fwd+bwd ms | predicted by n^2 from first | time ratio | n^2 ratio | peak step MiB | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = None if r["peak_step_bytes"] is None else r["peak_step_bytes"] / 2**20
        lines.append(
            f"| {r['sequence_length']} | {r['ffn_dim']} | {r['batch']} | {r['step_ms']:.1f} | "
            f"{r['predicted_ms_n2']:.1f} | {r['time_ratio']:.1f} | {r['n2_ratio']:.0f} | "
            f"{_fmt(peak, '.1f')} | {_fmt(r.get('memory_ratio'), '.1f')} |"
        )
    return "\n".join(lines)


def variants_table(rows):
    lines = ["| variant | policy | jit | fwd+bwd ms (min) | ms (median) | GFLOP/s (min) | vs baseline |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['policy']} | {r['jit_compile']} | {r['step_ms_min']:.1f} | "
            f"{r['step_ms']:.1f} | {r['gflops_best']:.0f} | {r['speedup_vs_baseline']:.2f}x |"
        )
    return "\n".join(lines)


def _find(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def targets(rows):
    """The issue's targets, as ratios of rows measured in this run (None where not measured)."""
    checks = []
    vision = [r for r in rows if r["section"] == "vision"]
    text = [r for r in rows if r["section"] == "text"]
    for r in vision:
        if r["model"] == "gMLP-S/16" and r["framework"] == "keras_gmlp" and r["mode"] == "train" \
                and r["policy"] == "float32" and r["mfu"] is not None:
            checks.append(dict(target=f"gMLP-S/16 fp32 training MFU, batch {r['batch']}",
                               value=r["mfu"], goal=0.75, met=r["mfu"] >= 0.75))
    for r in vision:
        if r["framework"] == "keras_gmlp" and r["mode"] == "train" and r["policy"] == "float32":
            bf16 = _find(vision, model=r["model"], framework="keras_gmlp", mode="train",
                         policy="mixed_bfloat16", batch=r["batch"])
            if bf16:
                ratio = bf16["throughput"] / r["throughput"]
                checks.append(dict(target=f"{r['model']} mixed_bfloat16 / float32 training, batch {r['batch']}",
                                   value=ratio, goal=1.8, met=ratio >= 1.8))
    for r in text:
        if r["model"].startswith("gMLP-36") and r["framework"] == "keras_gmlp":
            bert = _find(text, model="BERT-base MLM", policy=r["policy"], batch=r["batch"])
            if bert:
                ratio = r["throughput"] / bert["throughput"]
                checks.append(dict(target=f"gMLP-36 / BERT-base MLM tokens/s, {r['policy']}, batch {r['batch']}",
                                   value=ratio, goal=1.5, met=ratio >= 1.5))
    for r in vision + text:
        if r["framework"] == "keras_gmlp":
            ref = _find(vision + text, model=r["model"], framework="torch (g-mlp-pytorch)",
                        policy=r["policy"], batch=r["batch"], mode=r["mode"])
            if ref:
                ratio = r["throughput"] / ref["throughput"]
                checks.append(dict(target=f"{r['model']} keras_gmlp / PyTorch {r['mode']}, {r['policy']}, batch {r['batch']}",
                                   value=ratio, goal=1.0, met=ratio > 1.0))
    return checks


def targets_table(checks):
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for c in checks:
        value = f"{100 * c['value']:.0f}%" if "MFU" in c["target"] else f"{c['value']:.2f}x"
        goal = f"{100 * c['goal']:.0f}%" if "MFU" in c["target"] else f">= {c['goal']:.1f}x"
        lines.append(f"| {c['target']} | {value} | {goal} | {'yes' if c['met'] else 'no'} |")
    return "\n".join(lines)


def markdown(results):
    parts = [f"Run at {results['system']['time_utc']} on {results['system']['cpu_count']} cores "
             f"({results['system']['processor']}), load average before "
             f"{results['system']['load_average']}, after {results.get('load_average_after')}; "
             f"TensorFlow {results['system']['tensorflow']}, Keras {results['system']['keras']}; "
             f"`{results['command']}`."]
    if results.get("ceiling"):
        parts += ["### Matmul ceiling", ceiling_table(results["ceiling"])]
        if results.get("torch_matmul_gflops"):
            parts.append("PyTorch's own square matmul in its process, for reading the PyTorch rows "
                         "(MFU uses TensorFlow's ceiling above for every row): "
                         + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in results["torch_matmul_gflops"].items())
                         + ".")
    if any(r["section"] in ("vision", "text") for r in results["rows"]):
        parts += ["### Throughput (training includes the AdamW update)", throughput_table(results["rows"])]
    if results.get("targets"):
        parts += ["### Targets", targets_table(results["targets"])]
    if results.get("scaling"):
        parts += ["### SGU sequence-length scaling (forward+backward)", scaling_table(results["scaling"])]
    if results.get("variants"):
        parts += ["### Block implementation variants (forward+backward of a stack of gMLP-S blocks)",
                  variants_table(results["variants"])]
    if results.get("skipped"):
        parts += ["### Skipped", "\n".join(f"- {s}" for s in results["skipped"])]
    return "\n\n".join(parts) + "\n"


def write_json(results, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)


def write_chart(results, path):
    """A PNG with throughput per model/framework/policy, MFU, and the SGU scaling curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["section"] in ("vision", "text")]
    panels = [("vision", "train"), ("vision", "infer"), ("text", "train")]
    panels = [p for p in panels if any(r["section"] == p[0] and r["mode"] == p[1] for r in rows)]
    extra = 1 if results.get("scaling") else 0
    count = len(panels) + extra
    if count == 0:
        return None
    fig, axes = plt.subplots(1, count, figsize=(6 * count, 5.5), squeeze=False)
    for ax, (section, mode) in zip(axes[0], panels):
        selected = [r for r in rows if r["section"] == section and r["mode"] == mode]
        labels = [f"{r['model']}\n{r['framework'].split(' ')[0]} {r['policy'].replace('mixed_', '')} b{r['batch']}"
                  for r in selected]
        values = [r["throughput"] for r in selected]
        colors = ["tab:blue" if r["framework"] == "keras_gmlp" else
                  "tab:orange" if r["framework"] == "keras_hub" else "tab:green" for r in selected]
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=6)
        ax.invert_yaxis()
        unit = selected[0]["unit"] if selected else ""
        ax.set_xlabel(unit)
        ax.set_title(f"{section} {mode} (blue keras_gmlp, orange keras-hub, green torch)", fontsize=8)
        for i, r in enumerate(selected):
            if r["mfu"] is not None:
                ax.text(values[i], i, f" MFU {100 * r['mfu']:.0f}%", va="center", fontsize=6)
    if extra:
        ax = axes[0][-1]
        scaling = results["scaling"]
        n = [r["sequence_length"] for r in scaling]
        ax.loglog(n, [r["step_ms"] for r in scaling], "o-", label="measured fwd+bwd ms")
        ax.loglog(n, [r["predicted_ms_n2"] for r in scaling], "--", label="n^2 from first point")
        peaks = [r["peak_step_bytes"] for r in scaling]
        if all(peaks):
            ax.loglog(n, [p / 2**20 for p in peaks], "s-", label="peak step MiB")
        ax.set_xlabel("sequence length n")
        ax.set_title(f"SGU scaling (d_ffn {scaling[0]['ffn_dim']}, batch {scaling[0]['batch']})", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"keras_gmlp benchmarks, {results['system']['time_utc']}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
