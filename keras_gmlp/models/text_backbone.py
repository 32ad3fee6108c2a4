"""gMLP / aMLP text encoder: token ids and padding mask in, one vector per token out."""

import keras
import keras_hub

from keras_gmlp.layers.gmlp_block import GMLPBlock
from keras_gmlp.models.base import FunctionalModel
from keras_gmlp.models.layout import get_layout_map
from keras_gmlp.models.presets import TEXT_PRESETS
from keras_gmlp.models.presets import get_preset


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPBackbone(FunctionalModel):
    """A stack of gMLP blocks over token embeddings, with no position embeddings.

    The Spatial Gating Units carry position, so inputs need no position ids.
    Inputs may be shorter than `sequence_length` (the spatial weights are
    sliced); padded positions never influence real ones.

    Args:
        vocabulary_size: int, size of the token vocabulary.
        num_layers: int, number of gMLP blocks.
        hidden_dim: int, d_model.
        ffn_dim: int, d_ffn (even).
        sequence_length: int, the longest input the model accepts.
        tiny_attention_dim: optional int; set (paper: 64) for aMLP.
        dropout: float, dropout on embeddings and each block's output branch.
        drop_path_rate: float, stochastic-depth rate of the last block,
            decayed linearly to 0 at the first.
        causal: bool, each position only reads earlier ones.
        layer_norm_epsilon: float, epsilon of block and final LayerNorms.
        dtype: optional dtype policy for all layers (e.g. "mixed_bfloat16").

    Inputs: `{"token_ids": (batch, n) int, "padding_mask": (batch, n) int/bool}`.
    Output: `(batch, n, hidden_dim)`.

    Example:
    ```python
    backbone = keras_gmlp.models.GMLPBackbone.from_preset("gmlp_tiny", vocabulary_size=1000)
    outputs = backbone({"token_ids": ids, "padding_mask": ids != 0})
    ```
    """

    get_layout_map = staticmethod(get_layout_map)  # keras-hub's Backbone API

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        hidden_dim,
        ffn_dim,
        sequence_length,
        tiny_attention_dim=None,
        dropout=0.0,
        drop_path_rate=0.0,
        causal=False,
        layer_norm_epsilon=1e-6,
        dtype=None,
        **kwargs,
    ):
        # Layers are locals until keras.Model.__init__ has run: the PyTorch backend cannot
        # track a module assigned to an uninitialised torch.nn.Module.
        token_embedding = keras_hub.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=dtype,
            name="token_embedding",
        )
        embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
        )
        blocks = [
            GMLPBlock(
                hidden_dim,
                ffn_dim,
                sequence_length,
                tiny_attention_dim=tiny_attention_dim,
                dropout=dropout,
                drop_path_rate=drop_path_rate * i / max(num_layers - 1, 1),
                causal=causal,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=dtype,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="final_norm"
        )

        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        x = embeddings_dropout(token_embedding(token_ids))
        for block in blocks:
            x = block(x, padding_mask=padding_mask)
        x = final_norm(x)
        super().__init__(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask},
            outputs=x,
            dtype=dtype,
            **kwargs,
        )
        self.token_embedding = token_embedding
        self.embeddings_dropout = embeddings_dropout
        self.blocks = blocks
        self.final_norm = final_norm
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.ffn_dim = ffn_dim
        self.sequence_length = sequence_length
        self.tiny_attention_dim = tiny_attention_dim
        self.causal = causal
        self._remember_config(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            hidden_dim=hidden_dim,
            ffn_dim=ffn_dim,
            sequence_length=sequence_length,
            tiny_attention_dim=tiny_attention_dim,
            dropout=dropout,
            drop_path_rate=drop_path_rate,
            causal=causal,
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=dtype,
        )

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Builds the backbone of a text preset (see `presets.TEXT_PRESETS`), with overrides."""
        return cls(**{**get_preset(preset, TEXT_PRESETS), **overrides})
