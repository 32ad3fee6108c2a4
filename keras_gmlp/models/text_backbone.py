"""gMLP / aMLP text encoder: token ids and padding mask in, one vector per token out."""

import keras
import keras_hub

from keras_gmlp import validation
from keras_gmlp.layers.gmlp_block import GMLPBlock
from keras_gmlp.models import arguments
from keras_gmlp.models.base import BackboneBase
from keras_gmlp.models.layout import check_divisible
from keras_gmlp.models.layout import get_layout_map
from keras_gmlp.models.presets import TEXT_PRESETS


@keras.saving.register_keras_serializable(package="keras_gmlp")
class GMLPBackbone(BackboneBase):
    """A stack of gMLP blocks over token embeddings, with no position embeddings.

    The Spatial Gating Units carry position, so inputs need no position ids.
    Inputs may be shorter than `sequence_length` (the spatial weights are
    sliced), and with `spatial_projection="toeplitz"` longer too; padded
    positions never influence real ones.

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
        spatial_projection: the SGUs' token mixing, "dense" (the paper's (n, n) W,
            default) or "toeplitz" (W[m, j] = t(m - j): O(1) parameters in n, O(n log n) by
            FFT, and inputs longer than `sequence_length`; see `SpatialGatingUnit`).
        dtype: optional dtype policy (e.g. "mixed_bfloat16") of every layer and of the model
            itself (`backbone.dtype_policy`, which the tasks' heads and loss scaling follow).

    Inputs: `{"token_ids": (batch, n) int, "padding_mask": (batch, n) int/bool}`.
    Output: `(batch, n, hidden_dim)`.

    Example:
    ```python
    backbone = keras_gmlp.models.GMLPBackbone.from_preset("gmlp_tiny", vocabulary_size=1000)
    outputs = backbone({"token_ids": ids, "padding_mask": ids != 0})
    backbone.save_to_preset("my_preset")  # keras_hub.models.Backbone.from_preset("my_preset")
    ```
    """

    named_presets = TEXT_PRESETS
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
        spatial_projection="dense",
        dtype=None,
        **kwargs,
    ):
        kwargs.pop(arguments.VERSION_KEY, None)
        self.validate_arguments(
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
            spatial_projection=spatial_projection,
            dtype=dtype,
            **kwargs,
        )
        check_divisible(hidden_dim=hidden_dim, ffn_dim=ffn_dim)  # under ModelParallel
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
                spatial_projection=spatial_projection,
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
        # Backbone.token_embedding is a property (keras-hub's run_backbone_test embeds with it).
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
        self.dropout = dropout
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.spatial_projection = spatial_projection

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "hidden_dim": self.hidden_dim,
            "ffn_dim": self.ffn_dim,
            "sequence_length": self.sequence_length,
            "tiny_attention_dim": self.tiny_attention_dim,
            "dropout": self.dropout,
            "drop_path_rate": self.drop_path_rate,
            "causal": self.causal,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "spatial_projection": self.spatial_projection,
        }

    @classmethod
    def validate_arguments(cls, **kwargs):
        """Raises ValueError naming the first bad constructor argument, its value and what was
        expected: unknown names, missing required ones, and out-of-range values. Builds nothing.

        `GMLPBackbone.validate_arguments(**kwargs)` passing means `GMLPBackbone(**kwargs)` gets
        past every argument check.
        """
        kwargs = dict(kwargs)
        kwargs.pop(arguments.VERSION_KEY, None)
        arguments.check_known_arguments(cls, kwargs)
        checks = {
            "vocabulary_size": validation.check_positive_int,
            "num_layers": validation.check_positive_int,
            "hidden_dim": validation.check_positive_int,
            "ffn_dim": lambda name, value: arguments.check_even_positive_int(
                name, value, "the Spatial Gating Unit splits it in halves"),
            "sequence_length": validation.check_positive_int,
            "tiny_attention_dim": arguments.check_optional_positive_int,
            "dropout": validation.check_rate,
            "drop_path_rate": validation.check_rate,
            "causal": arguments.check_bool,
            "layer_norm_epsilon": validation.check_positive_float,
            "spatial_projection": arguments.check_spatial_projection,
            "dtype": lambda name, value: arguments.check_dtype(value),
            "name": lambda name, value: arguments.check_name(value),
            "trainable": arguments.check_bool,
        }
        for name, value in kwargs.items():
            checks[name](name, value)
