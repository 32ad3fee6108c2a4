"""lucidrains' PyTorch gMLP (g-mlp-pytorch) at the same configurations, when installed.

Optional: `pip install torch g-mlp-pytorch einops` (a CPU build of torch is
enough). Eager PyTorch, AdamW, cross-entropy; mixed_bfloat16 maps to CPU
autocast to bfloat16. The text model runs its blocks over every token and
its logits layer on the masked positions only, like the Keras masked LMs.

`benchmarks.run` runs this section in a child process
(`python -m benchmarks.torch_reference SPEC.json ROWS.json`) that never
imports TensorFlow: PyTorch 2.14 crashed (SIGSEGV) when it started in a
process whose TensorFlow had already trained models, and in a process of
its own neither framework's thread pools compete with the other's.
"""

import json
import os
import subprocess
import sys
import tempfile

from benchmarks import flops
from benchmarks.common import log_row
from benchmarks.common import result_row
from benchmarks.timing import measure


def available():
    """True when torch and g_mlp_pytorch import."""
    try:
        import g_mlp_pytorch  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _setup():
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    # TensorFlow flushes denormals to zero on its CPU threads; do the same for parity.
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    return torch


def _autocast(torch, policy):
    import contextlib

    if "bfloat16" in policy:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_step(torch, model, loss_of_batch, policy):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(torch, policy):
            loss = loss_of_batch()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _inference_step(torch, model, forward, policy):
    def step():
        model.eval()
        with torch.inference_mode(), _autocast(torch, policy):
            return forward()

    return step


def run_vision(cases, policies, batch_sizes, warmup, steps, ceiling, num_classes=1000, log=print):
    """Training and inference images/s of `gMLPVision` for every gMLP case."""
    torch = _setup()
    from g_mlp_pytorch import gMLPVision

    rows = []
    for name, case in cases.items():
        if case["kind"] != "gmlp":
            continue
        model = gMLPVision(
            image_size=case["image_size"],
            patch_size=case["patch_size"],
            num_classes=num_classes,
            dim=case["hidden_dim"],
            depth=case["num_layers"],
            ff_mult=case["ffn_dim"] // case["hidden_dim"],
        )
        params = sum(p.numel() for p in model.parameters())
        for policy in policies:
            for batch in case.get("batch_sizes", batch_sizes):
                images = torch.rand(batch, 3, case["image_size"], case["image_size"]) * 255
                labels = torch.randint(0, num_classes, (batch,))
                forward = flops.gmlp_vision_forward(
                    batch, case["image_size"], case["patch_size"], case["num_layers"],
                    case["hidden_dim"], case["ffn_dim"], num_classes)
                train = _train_step(
                    torch, model,
                    lambda: torch.nn.functional.cross_entropy(model(images).float(), labels), policy)
                infer = _inference_step(torch, model, lambda: model(images), policy)
                for mode, step, step_flops in (("train", train, flops.training(forward)),
                                               ("infer", infer, forward)):
                    timing = measure(step, warmup=warmup, steps=steps)
                    row = result_row("vision", name, "torch (g-mlp-pytorch)", policy, batch, mode,
                                     timing, step_flops, batch, "images/s", ceiling, params=params)
                    log(row)
                    rows.append(row)
        del model
    return rows


def run_text(cases, policies, batch_sizes, warmup, steps, ceiling, shape, log=print):
    """Masked-LM training tokens/s of the token `gMLP` for every gMLP case."""
    torch = _setup()
    from g_mlp_pytorch import gMLP

    seq, vocab, masked = shape["sequence_length"], shape["vocabulary_size"], shape["num_masked"]
    rows = []
    for name, case in cases.items():
        if case["kind"] != "gmlp":
            continue
        model = gMLP(
            num_tokens=vocab,
            dim=case["hidden_dim"],
            depth=case["num_layers"],
            seq_len=seq,
            ff_mult=case["ffn_dim"] // case["hidden_dim"],
        )
        params = sum(p.numel() for p in model.parameters())
        blocks = torch.nn.Sequential(*model.layers)

        for policy in [p for p in policies if p in case.get("policies", policies)]:
            for batch in batch_sizes:
                token_ids = torch.randint(5, vocab, (batch, seq))
                positions = torch.sort(torch.rand(batch, seq).topk(masked).indices, dim=-1).values
                labels = torch.gather(token_ids, 1, positions)

                def loss_of_batch():
                    hidden = blocks(model.to_embed(token_ids))
                    index = positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
                    logits = model.to_logits(torch.gather(hidden, 1, index)).float()
                    return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1))

                train = _train_step(torch, model, loss_of_batch, policy)
                timing = measure(train, warmup=warmup, steps=steps)
                step_flops = flops.training(flops.gmlp_mlm_forward(
                    batch, seq, case["num_layers"], case["hidden_dim"], case["ffn_dim"], vocab, masked))
                row = result_row("text", name, "torch (g-mlp-pytorch)", policy, batch, "train", timing,
                                 step_flops, batch * seq, "tokens/s", ceiling, params=params,
                                 extra={"sequence_length": seq, "num_masked": masked})
                log(row)
                rows.append(row)
        del model
    return rows


def matmul_gflops(sizes=(2048, 4096), dtypes=("float32", "bfloat16"), warmup=2, steps=5):
    """PyTorch's own square-matmul GFLOP/s per dtype (best median over `sizes`).

    Not the MFU reference (that is TensorFlow's, for every row): context for
    reading the PyTorch rows, whose BLAS may differ from TensorFlow's.
    """
    torch = _setup()
    result = {}
    for dtype in dtypes:
        best = 0.0
        for size in sizes:
            a = torch.randn(size, size).to(getattr(torch, dtype))
            b = torch.randn(size, size).to(getattr(torch, dtype))
            timing = measure(lambda: torch.matmul(a, b), warmup=warmup, steps=steps)
            best = max(best, 2 * size**3 / timing["median_s"] / 1e9)
        result[dtype] = best
    return result


def run_in_subprocess(spec):
    """Runs this section per `spec` in a child process; returns (rows, torch version, matmul
    GFLOP/s)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, rows_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "rows.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        subprocess.run([sys.executable, "-m", "benchmarks.torch_reference", spec_path, rows_path],
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(rows_path) as f:
            result = json.load(f)
    return result["rows"], result["torch"], result["matmul_gflops"]


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: python -m benchmarks.torch_reference SPEC.json ROWS.json")
    with open(argv[0]) as f:
        spec = json.load(f)
    ceiling = matmul_gflops([256, 512] if spec["quick"] else [2048, 4096])
    print("  torch matmul " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in ceiling.items()), flush=True)
    rows = []
    if spec["vision_cases"]:
        rows += run_vision(spec["vision_cases"], spec["policies"], spec["vision_batch_sizes"],
                           spec["warmup"], spec["steps"], spec["ceiling"], log=log_row)
    if spec["text_cases"]:
        rows += run_text(spec["text_cases"], spec["text_policies"], spec["text_batch_sizes"],
                         spec["warmup"], spec["steps"], spec["ceiling"], spec["text_shape"], log=log_row)
    import torch

    with open(argv[1], "w") as f:
        json.dump({"rows": rows, "torch": torch.__version__, "matmul_gflops": ceiling}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
