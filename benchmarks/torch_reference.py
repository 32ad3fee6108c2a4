"""lucidrains' PyTorch gMLP (g-mlp-pytorch) at the same configurations, when installed.

Optional: `pip install torch g-mlp-pytorch einops` (a CPU build of torch is
enough). Eager PyTorch, AdamW, cross-entropy; mixed_bfloat16 maps to CPU
autocast to bfloat16. The text model runs its blocks over every token and
its logits layer on the masked positions only, like the Keras masked LMs.
"""

import os

from benchmarks import flops
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
