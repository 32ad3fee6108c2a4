"""Analytic FLOPs of the benchmarked models (2 FLOPs per multiply-add).

Only matrix products are counted (channel projections, the SGU's token
mixing, attention, patch stem, heads): they are what a matmul ceiling can
be compared with. Element-wise work (LayerNorm, GELU, softmax, residuals)
is excluded, as in the usual model-FLOPs-utilisation convention. A
training step counts 3x the forward FLOPs (forward, plus the gradients with
respect to activations and to weights).
"""

TRAIN_FORWARD_MULTIPLIER = 3


def gmlp_block_forward(batch, tokens, hidden_dim, ffn_dim):
    """One gMLP block: d->ffn projection, SGU (n^2 * ffn/2 MACs), ffn/2->d projection."""
    channel_in = batch * tokens * hidden_dim * ffn_dim
    spatial = batch * tokens * tokens * (ffn_dim // 2)
    channel_out = batch * tokens * (ffn_dim // 2) * hidden_dim
    return 2 * (channel_in + spatial + channel_out)


def sgu_forward(batch, tokens, ffn_dim):
    """The SGU's token-mixing product alone: (n, n) @ (n, ffn/2) per example."""
    return 2 * batch * tokens * tokens * (ffn_dim // 2)


def gmlp_vision_forward(batch, image_size, patch_size, num_layers, hidden_dim, ffn_dim, num_classes, channels=3):
    """gMLP image classifier: patch stem, blocks, mean pool, linear head."""
    tokens = (image_size // patch_size) ** 2
    stem = 2 * batch * tokens * patch_size * patch_size * channels * hidden_dim
    blocks = num_layers * gmlp_block_forward(batch, tokens, hidden_dim, ffn_dim)
    head = 2 * batch * hidden_dim * num_classes
    return stem + blocks + head


def mlm_head_forward(batch, num_masked, hidden_dim, vocabulary_size):
    """keras-hub MaskedLMHead at the masked positions: dense d->d, then the tied d->vocab."""
    return 2 * batch * num_masked * (hidden_dim * hidden_dim + hidden_dim * vocabulary_size)


def gmlp_mlm_forward(batch, sequence_length, num_layers, hidden_dim, ffn_dim, vocabulary_size, num_masked):
    """gMLP masked LM: blocks over all tokens, head on the masked positions only."""
    blocks = num_layers * gmlp_block_forward(batch, sequence_length, hidden_dim, ffn_dim)
    return blocks + mlm_head_forward(batch, num_masked, hidden_dim, vocabulary_size)


def transformer_layer_forward(batch, tokens, hidden_dim, ffn_dim):
    """One encoder layer: QKV and output projections, QK^T and AV, two-layer MLP."""
    projections = 4 * tokens * hidden_dim * hidden_dim
    attention = 2 * tokens * tokens * hidden_dim
    mlp = 2 * tokens * hidden_dim * ffn_dim
    return 2 * batch * (projections + attention + mlp)


def bert_mlm_forward(batch, sequence_length, num_layers, hidden_dim, ffn_dim, vocabulary_size, num_masked):
    """BERT encoder over all tokens, MLM head on the masked positions only."""
    layers = num_layers * transformer_layer_forward(batch, sequence_length, hidden_dim, ffn_dim)
    return layers + mlm_head_forward(batch, num_masked, hidden_dim, vocabulary_size)


def vit_forward(batch, image_size, patch_size, num_layers, hidden_dim, ffn_dim, num_classes, channels=3):
    """ViT classifier: patch stem, encoder over patches + class token, linear head."""
    patches = (image_size // patch_size) ** 2
    stem = 2 * batch * patches * patch_size * patch_size * channels * hidden_dim
    layers = num_layers * transformer_layer_forward(batch, patches + 1, hidden_dim, ffn_dim)
    head = 2 * batch * hidden_dim * num_classes
    return stem + layers + head


def training(forward_flops):
    """FLOPs of one training step given the forward FLOPs."""
    return TRAIN_FORWARD_MULTIPLIER * forward_flops
