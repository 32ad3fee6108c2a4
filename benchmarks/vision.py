"""Image models: gMLP-S/16 and gMLP-Ti/16 (keras_gmlp) and a keras-hub ViT of matching size."""

import keras
import keras_hub
import tensorflow as tf

from benchmarks import flops
from benchmarks.common import release
from benchmarks.common import result_row
from benchmarks.common import use_policy
from benchmarks.steps import make_inference_step
from benchmarks.steps import make_train_step
from benchmarks.timing import measure
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPVisionBackbone

# Full-size configurations. Stochastic depth and dropout are off everywhere so every framework
# does the same deterministic work (lucidrains' layer dropping would skip whole blocks).
FULL_CASES = {
    "gMLP-S/16": dict(kind="gmlp", image_size=224, patch_size=16, num_layers=30, hidden_dim=256, ffn_dim=1536),
    # Ti at the largest batch size only, to keep the full run near 10 minutes on 2 cores.
    "gMLP-Ti/16": dict(kind="gmlp", image_size=224, patch_size=16, num_layers=30, hidden_dim=128, ffn_dim=768,
                       batch_sizes=(32,)),
    # DeiT-S / ViT-S/16, the Transformer the paper sets against gMLP-S (79.8 vs 79.6 top-1).
    "ViT-S/16": dict(kind="vit", image_size=224, patch_size=16, num_layers=12, hidden_dim=384, ffn_dim=1536, num_heads=6),
}
QUICK_CASES = {
    "gMLP-S/16": dict(kind="gmlp", image_size=32, patch_size=8, num_layers=2, hidden_dim=32, ffn_dim=96),
    "gMLP-Ti/16": dict(kind="gmlp", image_size=32, patch_size=8, num_layers=2, hidden_dim=16, ffn_dim=48),
    "ViT-S/16": dict(kind="vit", image_size=32, patch_size=8, num_layers=2, hidden_dim=32, ffn_dim=96, num_heads=2),
}


def build_keras_model(case, policy, num_classes):
    """A keras_gmlp gMLP classifier or a keras-hub ViT with a class-token head, in `policy`."""
    size = case["image_size"]
    if case["kind"] == "gmlp":
        backbone = GMLPVisionBackbone(
            image_shape=(size, size, 3),
            patch_size=case["patch_size"],
            num_layers=case["num_layers"],
            hidden_dim=case["hidden_dim"],
            ffn_dim=case["ffn_dim"],
            dtype=policy,
        )
        return GMLPImageClassifier(backbone, num_classes)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3),
        patch_size=case["patch_size"],
        num_layers=case["num_layers"],
        num_heads=case["num_heads"],
        hidden_dim=case["hidden_dim"],
        mlp_dim=case["ffn_dim"],
        dtype=policy,
    )
    images = keras.Input((size, size, 3), name="images")
    class_token = backbone(images)[:, 0]
    logits = keras.layers.Dense(num_classes, dtype=policy, name="head")(class_token)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(images, logits)


def forward_flops(case, batch, num_classes):
    args = (batch, case["image_size"], case["patch_size"], case["num_layers"],
            case["hidden_dim"], case["ffn_dim"], num_classes)
    return flops.gmlp_vision_forward(*args) if case["kind"] == "gmlp" else flops.vit_forward(*args)


def make_images(batch, size, num_classes, seed=0):
    images = tf.random.stateless_uniform((batch, size, size, 3), (seed, 1), 0.0, 255.0)
    labels = tf.random.stateless_uniform((batch,), (seed, 2), 0, num_classes, dtype=tf.int32)
    return images, labels


def run(cases, policies, batch_sizes, warmup, steps, ceiling, jit_compile=False, num_classes=1000, log=print):
    """Training and inference images/s of every Keras image model in `cases`."""
    rows = []
    for name, case in cases.items():
        framework = "keras_gmlp" if case["kind"] == "gmlp" else "keras_hub"
        for policy in policies:
            use_policy(policy)
            model = build_keras_model(case, policy, num_classes)
            example = make_images(1, case["image_size"], num_classes)
            train = make_train_step(model, *example, jit_compile=jit_compile)
            infer = make_inference_step(model, example[0], jit_compile=jit_compile)
            for batch in case.get("batch_sizes", batch_sizes):
                images, labels = make_images(batch, case["image_size"], num_classes)
                forward = forward_flops(case, batch, num_classes)
                for mode, step, step_flops in (
                    ("train", lambda: train(images, labels), flops.training(forward)),
                    ("infer", lambda: infer(images), forward),
                ):
                    timing = measure(step, warmup=warmup, steps=steps)
                    row = result_row("vision", name, framework, policy, batch, mode, timing,
                                     step_flops, batch, "images/s", ceiling,
                                     params=model.count_params(), jit_compile=jit_compile)
                    log(row)
                    rows.append(row)
            del model, train, infer
            release()
    return rows
