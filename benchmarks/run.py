"""Runs keras_gmlp's benchmarks and writes a table, JSON and a PNG chart.

    python -m benchmarks.run                  # full sizes (about 13 minutes on 2 cores; --sections all: 16)
    python -m benchmarks.run --quick          # tiny sizes, 1-2 minutes (tracing): checks every section runs

See benchmarks/README.md for what each section measures.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SECTIONS = ("ceiling", "vision", "text", "torch", "scaling", "variants")
# `variants` (the implementation comparisons, ~2-3 minutes) is opt-in: --sections all, or name it.
DEFAULT_SECTIONS = ("ceiling", "vision", "text", "torch", "scaling")
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and sizes: a smoke run of every section (1-2 minutes, mostly tracing)")
    parser.add_argument("--output-dir", default=None,
                        help=f"where benchmark.json/.md/.png go (default {DEFAULT_OUTPUT}, "
                             "or its quick/ subfolder with --quick)")
    parser.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}, or 'all' "
                             f"(default {','.join(DEFAULT_SECTIONS)})")
    parser.add_argument("--policies", default="float32,mixed_bfloat16")
    parser.add_argument("--vision-batch-sizes", default="8,32")
    parser.add_argument("--text-batch-sizes", default="8")
    parser.add_argument("--torch-vision-batch-sizes", default="8",
                        help="batch sizes of the PyTorch image models (eager PyTorch is slow at 32)")
    parser.add_argument("--vision-models", default="gMLP-S/16,gMLP-Ti/16,ViT-S/16")
    parser.add_argument("--text-models", default="gMLP-36 MLM (102M),gmlp_base MLM,BERT-base MLM")
    parser.add_argument("--text-policies", default=None,
                        help="policies for the text section (default: --policies)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps; the median is reported (default 3, quick 2)")
    parser.add_argument("--jit-compile", choices=("off", "on"), default="off",
                        help="XLA for the Keras steps (off: TF graph with oneDNN kernels)")
    parser.add_argument("--scaling-lengths", default=None, help="default 128,512,2048 (quick 16,32,64)")
    args = parser.parse_args(argv)
    args.sections = list(SECTIONS) if args.sections == "all" else [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    return args


def _ints(text):
    return [int(x) for x in text.split(",") if x]


def main(argv=None):
    args = parse_args(argv)
    from benchmarks import report
    from benchmarks.common import log_row
    from benchmarks import scaling
    from benchmarks import text
    from benchmarks import torch_reference
    from benchmarks import variants
    from benchmarks import vision
    from benchmarks.timing import load_average
    from benchmarks.timing import system_info

    quick = args.quick
    warmup = args.warmup or 1
    steps = args.steps or (2 if quick else 3)
    jit = args.jit_compile == "on"
    policies = [p for p in args.policies.split(",") if p]
    text_policies = [p for p in (args.text_policies or args.policies).split(",") if p]
    vision_sizes = [2] if quick else _ints(args.vision_batch_sizes)
    text_sizes = [2] if quick else _ints(args.text_batch_sizes)
    output_dir = args.output_dir or (os.path.join(DEFAULT_OUTPUT, "quick") if quick else DEFAULT_OUTPUT)
    all_vision = vision.QUICK_CASES if quick else vision.FULL_CASES
    vision_cases = {k: all_vision[k] for k in args.vision_models.split(",") if k in all_vision}
    all_text = text.QUICK_CASES if quick else text.FULL_CASES
    text_cases = {k: all_text[k] for k in args.text_models.split(",") if k in all_text}
    text_shape = text.QUICK_SHAPE if quick else text.FULL_SHAPE

    results = {"command": " ".join(["python -m benchmarks.run"] + (argv if argv is not None else sys.argv[1:])),
               "quick": quick, "system": system_info(), "rows": [], "skipped": [],
               "settings": {"warmup": warmup, "steps": steps, "jit_compile": jit, "policies": policies,
                            "text_policies": text_policies, "vision_batch_sizes": vision_sizes,
                            "text_batch_sizes": text_sizes, "text_shape": text_shape}}
    started = time.perf_counter()
    print(f"load average {results['system']['load_average']}; writing to {output_dir}", flush=True)

    ceiling = {}
    if "ceiling" in args.sections:
        print("[ceiling] TF matmul GFLOP/s", flush=True)
        from benchmarks.ceiling import matmul_ceiling

        ceiling = matmul_ceiling([256, 512] if quick else [2048, 4096], warmup=1 if quick else 2,
                                 steps=3 if quick else 5)
        for dtype, c in ceiling.items():
            print(f"  {dtype:9s} {c['gflops']:8.1f} GFLOP/s (n={c['size']})", flush=True)
        results["ceiling"] = ceiling
    if "vision" in args.sections:
        print("[vision] Keras image models", flush=True)
        results["rows"] += vision.run(vision_cases, policies, vision_sizes, warmup, steps, ceiling,
                                      jit_compile=jit, log=log_row)
    if "text" in args.sections:
        print("[text] masked-LM training", flush=True)
        results["rows"] += text.run(text_cases, text_policies, text_sizes, warmup, steps, ceiling,
                                    text_shape, jit_compile=jit, log=log_row)
    if "torch" in args.sections:
        if torch_reference.available():
            print("[torch] lucidrains g-mlp-pytorch (in a process of its own)", flush=True)
            torch_sizes = vision_sizes if quick else _ints(args.torch_vision_batch_sizes)
            torch_rows, torch_version, torch_matmul = torch_reference.run_in_subprocess(dict(
                quick=quick,
                vision_cases=vision_cases if "vision" in args.sections else {},
                text_cases=text_cases if "text" in args.sections else {},
                policies=policies, text_policies=text_policies, vision_batch_sizes=torch_sizes,
                text_batch_sizes=text_sizes, warmup=warmup, steps=steps, ceiling=ceiling,
                text_shape=text_shape))
            results["rows"] += torch_rows
            results["system"]["torch"] = torch_version
            results["torch_matmul_gflops"] = torch_matmul
        else:
            results["skipped"].append("torch: `torch` and `g_mlp_pytorch` are not both importable "
                                      "(pip install torch g-mlp-pytorch einops to add the PyTorch columns)")
            print("[torch] skipped: " + results["skipped"][-1], flush=True)
    if "scaling" in args.sections:
        print("[scaling] SGU forward+backward vs sequence length", flush=True)
        lengths = _ints(args.scaling_lengths or ("16,32,64" if quick else "128,512,2048"))
        results["scaling"] = scaling.run(lengths, ffn_dim=64 if quick else 768, batch=2 if quick else 4,
                                         warmup=warmup, steps=steps, log=log_row)
    if "variants" in args.sections:
        print("[variants] gMLP block implementations, side by side", flush=True)
        results["variants"] = variants.run(quick=quick, log=log_row)

    if "ceiling" in args.sections and not quick:
        # Measured again at the end: on a shared machine the ceiling moves with the load. MFU uses
        # the higher of the two medians, so it is never flattered by a slow ceiling measurement.
        from benchmarks.ceiling import matmul_ceiling

        print("[ceiling] again, after the models", flush=True)
        again = matmul_ceiling([2048, 4096], warmup=2, steps=5)
        for dtype, c in again.items():
            print(f"  {dtype:9s} {c['gflops']:8.1f} GFLOP/s (n={c['size']})", flush=True)
            first = ceiling[dtype]
            first["gflops_start"], first["gflops_end"] = first["gflops"], c["gflops"]
            first["runs_end"] = c["runs"]
            first["gflops"] = max(first["gflops"], c["gflops"])
        for row in results["rows"]:
            c = ceiling.get(row["ceiling_dtype"])
            if c:
                row["mfu"] = row["gflops"] / c["gflops"]
    results["targets"] = report.targets(results["rows"])
    results["load_average_after"] = load_average()
    results["total_s"] = time.perf_counter() - started
    md = report.markdown(results)
    print("\n" + md, flush=True)
    report.write_json(results, os.path.join(output_dir, "benchmark.json"))
    with open(os.path.join(output_dir, "benchmark.md"), "w") as f:
        f.write(md)
    chart = report.write_chart(results, os.path.join(output_dir, "benchmark.png"))
    print(f"wrote {output_dir}/benchmark.json, benchmark.md{', benchmark.png' if chart else ''} "
          f"in {results['total_s']:.0f} s", flush=True)
    return results


if __name__ == "__main__":
    main()
