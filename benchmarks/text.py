"""Masked-LM pre-training throughput: gMLP (keras_gmlp) against keras-hub's BERT."""

import keras
import keras_hub
import tensorflow as tf

from benchmarks import flops
from benchmarks.common import release
from benchmarks.common import result_row
from benchmarks.common import use_policy
from benchmarks.steps import make_train_step
from benchmarks.timing import measure
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPMaskedLM

# The paper's ~BERT-base-sized gMLP (36 layers, 512, 3072: ~102M parameters), its gmlp_base
# (48 layers, ~130M) and BERT-base (12 layers, 768, 3072, 12 heads). Dropout is off in all.
FULL_CASES = {
    "gMLP-36 MLM (102M)": dict(kind="gmlp", num_layers=36, hidden_dim=512, ffn_dim=3072),
    # float32 only, to keep the full run near 10 minutes on 2 cores.
    "gmlp_base MLM": dict(kind="gmlp", num_layers=48, hidden_dim=512, ffn_dim=3072, policies=("float32",)),
    "BERT-base MLM": dict(kind="bert", num_layers=12, hidden_dim=768, ffn_dim=3072, num_heads=12),
}
FULL_SHAPE = dict(sequence_length=128, vocabulary_size=30522, num_masked=20)
QUICK_CASES = {
    "gMLP-36 MLM (102M)": dict(kind="gmlp", num_layers=2, hidden_dim=32, ffn_dim=64),
    "gmlp_base MLM": dict(kind="gmlp", num_layers=3, hidden_dim=32, ffn_dim=64),
    "BERT-base MLM": dict(kind="bert", num_layers=2, hidden_dim=32, ffn_dim=64, num_heads=2),
}
QUICK_SHAPE = dict(sequence_length=16, vocabulary_size=500, num_masked=4)


def _mlm_head(vocabulary_size, token_embedding):
    # As in GMLPMaskedLM: keras-hub's head runs in float32 (it fails under mixed_bfloat16
    # otherwise) while the tied vocabulary projection keeps the embedding's dtype.
    return keras_hub.layers.MaskedLMHead(
        vocabulary_size=vocabulary_size,
        token_embedding=token_embedding,
        intermediate_activation="gelu",
        layer_norm_epsilon=1e-6,
        dtype="float32",
        name="mlm_head",
    )


def build_keras_model(case, policy, sequence_length, vocabulary_size):
    """A gMLP masked LM (keras_gmlp) or keras-hub BERT with the same masked-LM head."""
    if case["kind"] == "gmlp":
        backbone = GMLPBackbone(
            vocabulary_size=vocabulary_size,
            num_layers=case["num_layers"],
            hidden_dim=case["hidden_dim"],
            ffn_dim=case["ffn_dim"],
            sequence_length=sequence_length,
            dtype=policy,
        )
        return GMLPMaskedLM(backbone)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=case["num_layers"],
        num_heads=case["num_heads"],
        hidden_dim=case["hidden_dim"],
        intermediate_dim=case["ffn_dim"],
        dropout=0.0,
        max_sequence_length=sequence_length,
        dtype=policy,
    )
    inputs = dict(backbone.input)
    inputs["mask_positions"] = keras.Input((None,), dtype="int32", name="mask_positions")
    sequence = backbone(backbone.input)["sequence_output"]
    logits = _mlm_head(vocabulary_size, backbone.token_embedding)(
        sequence, mask_positions=inputs["mask_positions"]
    )
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits)


def make_batch(kind, batch, sequence_length, vocabulary_size, num_masked, seed=0):
    """Full-length sequences with `num_masked` distinct masked positions per row."""
    token_ids = tf.random.stateless_uniform(
        (batch, sequence_length), (seed, 1), 5, vocabulary_size, dtype=tf.int32
    )
    noise = tf.random.stateless_uniform((batch, sequence_length), (seed, 2))
    positions = tf.sort(tf.math.top_k(noise, num_masked).indices, axis=-1)
    inputs = {
        "token_ids": token_ids,
        "padding_mask": tf.ones((batch, sequence_length), tf.int32),
        "mask_positions": positions,
    }
    if kind == "bert":
        inputs["segment_ids"] = tf.zeros((batch, sequence_length), tf.int32)
    labels = tf.gather(token_ids, positions, batch_dims=1)
    weights = tf.ones((batch, num_masked), tf.float32)
    return inputs, labels, weights


def forward_flops(case, batch, sequence_length, vocabulary_size, num_masked):
    args = (batch, sequence_length, case["num_layers"], case["hidden_dim"], case["ffn_dim"],
            vocabulary_size, num_masked)
    if case["kind"] == "gmlp":
        return flops.gmlp_mlm_forward(*args)
    return flops.bert_mlm_forward(*args)


def run(cases, policies, batch_sizes, warmup, steps, ceiling, shape, jit_compile=False, log=print):
    """Masked-LM training tokens/s (all tokens of each sequence) of every case."""
    rows = []
    seq, vocab, masked = shape["sequence_length"], shape["vocabulary_size"], shape["num_masked"]
    for name, case in cases.items():
        framework = "keras_gmlp" if case["kind"] == "gmlp" else "keras_hub"
        for policy in [p for p in policies if p in case.get("policies", policies)]:
            use_policy(policy)
            model = build_keras_model(case, policy, seq, vocab)
            example = make_batch(case["kind"], 1, seq, vocab, masked)
            train = make_train_step(model, *example[:2], weighted=True, jit_compile=jit_compile)
            for batch in batch_sizes:
                inputs, labels, weights = make_batch(case["kind"], batch, seq, vocab, masked)
                timing = measure(lambda: train(inputs, labels, weights), warmup=warmup, steps=steps)
                step_flops = flops.training(forward_flops(case, batch, seq, vocab, masked))
                row = result_row("text", name, framework, policy, batch, "train", timing, step_flops,
                                 batch * seq, "tokens/s", ceiling, params=model.count_params(),
                                 jit_compile=jit_compile,
                                 extra={"sequence_length": seq, "num_masked": masked})
                log(row)
                rows.append(row)
            del model, train
            release()
    return rows
