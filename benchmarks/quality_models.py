"""Models of the quality benchmark that are not keras_gmlp's: peers and the ablation's variants.

- `vit_classifier`: keras-hub's `ViTBackbone` (class token) with a linear head, its MLP width
  chosen so that its parameters match a given count.
- `bert_backbone`, `bert_masked_lm`, `bert_text_classifier`: keras-hub's `BertBackbone`, its
  MLP width matched so that its masked LM (`MaskedLMHead`, tied embeddings) has gMLP's
  parameters, taking `GMLPMaskedLM`'s inputs; the classifier has `GMLPTextClassifier`'s head.
- `mixer_image_classifier`: an MLP-Mixer image classifier of a given parameter count.
- `ablation_masked_lm`: the paper's Table 3 variants of the gating in a gMLP block, with
  Z = GELU(U LayerNorm(x)) and f(Z) = W LayerNorm(Z) + b over tokens (W near zero, b = 1, as the
  SGU): "multiplicative" Z * f(Z) (no split), "additive" Z + f(Z), "linear" f(Z), and "mixer",
  an MLP-Mixer block (token MLP over the sequence, then channel MLP). The split design,
  Z1 * f(Z2), is keras_gmlp's own `GMLPMaskedLM` in the benchmark.

These live in benchmarks/ because the library ships only the paper's chosen design.
"""

import keras
import keras_hub
from keras import ops


def used_params(model):
    """Parameters that reach the loss: all, less BertBackbone's pooler (unused by a masked LM)."""
    return int(sum(w.numpy().size for w in model.weights if "pooled_dense" not in w.path))


_WIDTHS = {}


def _matched_width(build, target, low=8, key=None):
    """The width w >= `low` whose `used_params(build(w))` is closest to `target`.

    With a `key` (the build's arguments), the answer is remembered: seeds rebuild the same model.

    The count is linear in an MLP's width (both its matrices and a bias grow with it), so two
    builds give the line and a third, at the rounded solution, checks it.
    """
    if key is not None and (key, target) in _WIDTHS:
        return _WIDTHS[(key, target)]
    a, b = used_params(build(low)), used_params(build(2 * low))
    per_unit = (b - a) / low
    width = max(low, int(round(low + (target - a) / per_unit)))
    if used_params(build(width)) != a + per_unit * (width - low):
        raise AssertionError("parameter count is not linear in the width")
    if key is not None:
        _WIDTHS[(key, target)] = width
    return width


def vit_classifier(image_shape, patch_size, num_layers, num_heads, hidden_dim, num_classes,
                   target_params):
    """keras-hub ViT + Dense head with about `target_params` parameters (pixels in [0, 255])."""

    def build(mlp_dim):
        backbone = keras_hub.models.ViTBackbone(
            image_shape=image_shape, patch_size=patch_size, num_layers=num_layers,
            num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim)
        images = keras.Input(image_shape)
        features = backbone(keras.layers.Rescaling(1 / 127.5, offset=-1.0)(images))
        logits = keras.layers.Dense(num_classes)(features[:, 0])  # the class token
        return keras.Model(images, logits, name="vit")

    key = ("vit", image_shape, patch_size, num_layers, num_heads, hidden_dim, num_classes)
    return build(_matched_width(build, target_params, key=key))


def _mlm_inputs(sequence_length=None):
    return {
        "token_ids": keras.Input((sequence_length,), dtype="int32", name="token_ids"),
        "padding_mask": keras.Input((sequence_length,), dtype="int32", name="padding_mask"),
        "mask_positions": keras.Input((None,), dtype="int32", name="mask_positions"),
    }


def _mlm_head(vocabulary_size, embedding):
    return keras_hub.layers.MaskedLMHead(
        vocabulary_size=vocabulary_size, token_embedding=embedding, intermediate_activation="gelu",
        layer_norm_epsilon=1e-6, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))


def bert_backbone(vocabulary_size, sequence_length, num_layers, num_heads, hidden_dim, target_params):
    """keras-hub `BertBackbone` (no dropout) whose masked LM (`bert_masked_lm`) has about
    `target_params` parameters: its MLP width is matched."""

    def backbone(intermediate_dim):
        return keras_hub.models.BertBackbone(
            vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=num_heads,
            hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, dropout=0.0,
            max_sequence_length=sequence_length, num_segments=1)

    key = ("bert", vocabulary_size, sequence_length, num_layers, num_heads, hidden_dim)
    return backbone(_matched_width(lambda width: bert_masked_lm(backbone(width)), target_params, key=key))


def _bert_sequence(backbone, inputs):
    return backbone({"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"],
                     "segment_ids": ops.zeros_like(inputs["token_ids"])})["sequence_output"]


def bert_masked_lm(backbone):
    """`backbone` (a `BertBackbone`) with keras-hub's `MaskedLMHead` tied to its embedding, taking
    the inputs of `GMLPMaskedLM` ({token_ids, padding_mask, mask_positions}; segment ids 0)."""
    inputs = _mlm_inputs()
    head = _mlm_head(backbone.vocabulary_size, backbone.token_embedding)
    logits = head(_bert_sequence(backbone, inputs), mask_positions=inputs["mask_positions"])
    return keras.Model(inputs, logits, name="bert_masked_lm")


def bert_text_classifier(backbone, num_classes, dropout=0.1):
    """`backbone` (a `BertBackbone`) with `GMLPTextClassifier`'s head: mean over real tokens,
    dropout, Dense. The same head for both families keeps the comparison about the encoders
    (pretraining here packs text without [CLS], so BERT's pooled [CLS] output is untrained)."""
    from keras_gmlp.layers.masked_mean_pooling import MaskedMeanPooling

    inputs = {name: keras.Input((None,), dtype="int32", name=name) for name in ("token_ids", "padding_mask")}
    pooled = MaskedMeanPooling(name="pooler")(_bert_sequence(backbone, inputs), padding_mask=inputs["padding_mask"])
    logits = keras.layers.Dense(num_classes, name="head")(keras.layers.Dropout(dropout)(pooled))
    return keras.Model(inputs, logits, name="bert_text_classifier")


def mixer_image_classifier(image_shape, patch_size, num_layers, hidden_dim, num_classes, target_params):
    """An MLP-Mixer (`MixerBlock`s over patch tokens, token MLP half the patch count wide), with
    GMLPImageClassifier's stem and head (rescale to [-1, 1], patch embedding, LayerNorm, mean,
    Dense), its channel-MLP width chosen for about `target_params` parameters."""
    from keras_gmlp.layers.patch_embedding import PatchEmbedding

    tokens = (image_shape[0] // patch_size) * (image_shape[1] // patch_size)

    def build(ffn_dim):
        images = keras.Input(image_shape)
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(images)
        x = PatchEmbedding(patch_size, hidden_dim)(x)
        for i in range(num_layers):
            x = MixerBlock(hidden_dim, ffn_dim, tokens, max(tokens // 2, 1), name=f"block_{i}")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        logits = keras.layers.Dense(num_classes)(ops.mean(x, axis=1))
        return keras.Model(images, logits, name="mixer")

    key = ("mixer", image_shape, patch_size, num_layers, hidden_dim, num_classes)
    return build(_matched_width(build, target_params, key=key))


class GatingBlock(keras.layers.Layer):
    """x + V s(Z) with Z = GELU(U LayerNorm(x)); s is the ablation's `kind` of gating."""

    KINDS = ("multiplicative", "additive", "linear")

    def __init__(self, hidden_dim, ffn_dim, sequence_length, kind, **kwargs):
        super().__init__(**kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"`kind`={kind!r}: expected one of {self.KINDS}.")
        self.kind, self.sequence_length = kind, sequence_length
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6)
        self.proj_in = keras.layers.Dense(ffn_dim, activation=lambda z: ops.gelu(z, approximate=False))
        self.gate_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.proj_out = keras.layers.Dense(hidden_dim)

    def build(self, input_shape):
        n = self.sequence_length
        self.spatial_kernel = self.add_weight(
            (n, n), initializer=keras.initializers.RandomNormal(stddev=1e-6), name="spatial_kernel")
        self.spatial_bias = self.add_weight((n,), initializer="ones", name="spatial_bias")
        self.norm.build(input_shape)
        self.proj_in.build(input_shape)
        ffn_shape = (*input_shape[:-1], self.proj_in.units)
        self.gate_norm.build(ffn_shape)
        self.proj_out.build(ffn_shape)

    def call(self, x):
        z = self.proj_in(self.norm(x))
        spatial = ops.einsum("mj,bjc->bmc", self.spatial_kernel, self.gate_norm(z))
        f = spatial + self.spatial_bias[None, :, None]
        s = {"multiplicative": lambda: z * f, "additive": lambda: z + f, "linear": lambda: f}[self.kind]()
        return x + self.proj_out(s)


class MixerBlock(keras.layers.Layer):
    """MLP-Mixer: x + TokenMLP(LayerNorm(x)) over the sequence axis, then x + ChannelMLP(...)."""

    def __init__(self, hidden_dim, ffn_dim, sequence_length, token_dim, **kwargs):
        super().__init__(**kwargs)
        gelu = lambda z: ops.gelu(z, approximate=False)  # noqa: E731
        self.token_norm = keras.layers.LayerNormalization(epsilon=1e-6)
        self.token_in = keras.layers.Dense(token_dim, activation=gelu)
        self.token_out = keras.layers.Dense(sequence_length)
        self.channel_norm = keras.layers.LayerNormalization(epsilon=1e-6)
        self.channel_in = keras.layers.Dense(ffn_dim, activation=gelu)
        self.channel_out = keras.layers.Dense(hidden_dim)

    def call(self, x):
        y = ops.transpose(self.token_norm(x), (0, 2, 1))  # (batch, channels, tokens)
        x = x + ops.transpose(self.token_out(self.token_in(y)), (0, 2, 1))
        return x + self.channel_out(self.channel_in(self.channel_norm(x)))


def ablation_masked_lm(kind, vocabulary_size, sequence_length, num_layers, hidden_dim, ffn_dim):
    """A masked LM of `num_layers` blocks of `kind` ("multiplicative", "additive", "linear",
    "mixer"), embeddings and head as `GMLPMaskedLM` (no position embeddings but the mixer's)."""
    inputs = _mlm_inputs(sequence_length)  # the spatial and token-MLP weights fix the length
    embedding = keras_hub.layers.ReversibleEmbedding(
        vocabulary_size, hidden_dim, embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02))
    x = embedding(inputs["token_ids"])
    x = x * ops.cast(inputs["padding_mask"][..., None], x.dtype)  # padded tokens carry nothing
    for i in range(num_layers):
        if kind == "mixer":
            # Mixer's token MLP width: half the sequence, as Mixer-B/16's 384 for 196 patches.
            x = MixerBlock(hidden_dim, ffn_dim, sequence_length, max(sequence_length // 2, 1),
                           name=f"block_{i}")(x)
        else:
            x = GatingBlock(hidden_dim, ffn_dim, sequence_length, kind, name=f"block_{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    logits = _mlm_head(vocabulary_size, embedding)(x, mask_positions=inputs["mask_positions"])
    return keras.Model(inputs, logits, name=f"ablation_{kind}")
