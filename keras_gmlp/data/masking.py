"""BERT masking with stateless randomness, so a resumed input pipeline repeats its masks.

`keras_hub.layers.MaskedLMMaskGenerator` (tensorflow-text's RandomItemSelector and
MaskValuesChooser) draws from stateful random ops whose state a tf.data iterator checkpoint does
not hold: a resumed run would mask differently from an uninterrupted one. `mask_sequence` follows
the same rules with `tf.random.stateless_*` draws keyed by a per-element seed:

- selectable: non-padding positions whose token is not in `unselectable_ids`;
- count: ceil(selectable * selection_rate), capped at `max_selections` (as tensorflow-text);
- positions chosen uniformly without replacement, returned in increasing order;
- each chosen token becomes [MASK] with probability `mask_token_rate`, a uniformly random id
  in [0, vocabulary_size) with probability `random_token_rate`, else stays;
- outputs padded to `max_selections` with position 0, id 0, weight 0.
"""

import tensorflow as tf


def mask_sequence(
    token_ids,
    length,
    seed,
    *,
    vocabulary_size,
    mask_token_id,
    unselectable_ids,
    selection_rate,
    max_selections,
    mask_token_rate=0.8,
    random_token_rate=0.1,
):
    """Mask one sequence.

    Args:
        token_ids: (n,) int32, padded.
        length: scalar, number of real tokens (the rest is padding).
        seed: (2,) stateless seed; same seed -> same masks.
    Returns:
        (masked_token_ids (n,), mask_positions (m,), mask_ids (m,), mask_weights (m,) float32),
        m = max_selections.
    """
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    n = tf.shape(token_ids)[0]
    positions = tf.range(n)
    selectable = positions < tf.cast(length, tf.int32)
    for token in unselectable_ids:
        selectable = tf.logical_and(selectable, tf.not_equal(token_ids, token))
    num_selectable = tf.reduce_sum(tf.cast(selectable, tf.float32))
    num_to_select = tf.cast(tf.math.ceil(num_selectable * selection_rate), tf.int32)
    num_to_select = tf.minimum(num_to_select, max_selections)

    select_seed, choice_seed, token_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    # A uniformly random order of the selectable positions: sort random keys, unselectable last.
    keys = tf.random.stateless_uniform([n], select_seed)
    keys = tf.where(selectable, keys, 2.0)
    order = tf.argsort(keys, stable=True)
    # Pad the candidate list so `max_selections` may exceed the sequence length.
    order = tf.concat([order, tf.fill([max_selections], n)], axis=0)[:max_selections]
    slot = tf.range(max_selections)
    valid = slot < num_to_select
    chosen = tf.sort(tf.where(valid, order, n))  # valid positions first, ascending
    mask_positions = tf.where(valid, chosen, 0)
    mask_ids = tf.where(valid, tf.gather(token_ids, tf.minimum(mask_positions, n - 1)), 0)
    mask_weights = tf.cast(valid, tf.float32)

    choice = tf.random.stateless_uniform([max_selections], choice_seed)
    random_ids = tf.random.stateless_uniform(
        [max_selections], token_seed, minval=0, maxval=vocabulary_size, dtype=tf.int32
    )
    replacement = tf.where(
        choice < mask_token_rate,
        tf.fill([max_selections], tf.constant(mask_token_id, tf.int32)),
        tf.where(choice < mask_token_rate + random_token_rate, random_ids, mask_ids),
    )
    masked = tf.tensor_scatter_nd_update(
        token_ids,
        tf.boolean_mask(mask_positions, valid)[:, None],
        tf.boolean_mask(replacement, valid),
    )
    return masked, mask_positions, mask_ids, mask_weights
