import re

import keras
import numpy as np
import pytest

import numpy_reference as ref
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPMaskedLM
from keras_gmlp.models import GMLPTextClassifier
from keras_gmlp.models import TEXT_PRESETS
from weights import load_block

VOCAB, N, D, FFN = 40, 12, 16, 32


def small_backbone(**kwargs):
    config = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=D, ffn_dim=FFN, sequence_length=N)
    return GMLPBackbone(**{**config, **kwargs})


def batch(rng, lengths, n=N):
    ids = rng.integers(1, VOCAB, size=(len(lengths), n)).astype("int32")
    mask = (np.arange(n)[None] < np.array(lengths)[:, None]).astype("int32")
    return {"token_ids": ids * mask, "padding_mask": mask}


@pytest.mark.parametrize("attention_dim", [None, 4], ids=["gmlp", "amlp"])
def test_backbone_matches_numpy(rng, attention_dim):
    backbone = small_backbone(tiny_attention_dim=attention_dim)
    params = []
    for block in backbone.blocks:
        p = ref.random_block_params(rng, D, FFN, N, attention_dim)
        load_block(block, p)
        params.append(p)
    inputs = batch(rng, [N, 5])
    x = keras.ops.convert_to_numpy(backbone.token_embedding.embeddings)[inputs["token_ids"]]
    for p in params:
        x = ref.gmlp_block(x, p, mask=inputs["padding_mask"], attention_dim=attention_dim)
    norm = backbone.final_norm
    expected = ref.layer_norm(x, keras.ops.convert_to_numpy(norm.gamma), keras.ops.convert_to_numpy(norm.beta), 1e-6)
    np.testing.assert_allclose(backbone(inputs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attention_dim", [None, 4], ids=["gmlp", "amlp"])
def test_backbone_padding_never_leaks(rng, attention_dim):
    backbone = small_backbone(tiny_attention_dim=attention_dim)
    for block in backbone.blocks:
        load_block(block, ref.random_block_params(rng, D, FFN, N, attention_dim))
    inputs = batch(rng, [N, 7, 3])
    other = dict(inputs, token_ids=np.where(inputs["padding_mask"] == 1, inputs["token_ids"],
                                            rng.integers(1, VOCAB, size=(3, N))).astype("int32"))
    real = inputs["padding_mask"].astype(bool)
    a, b = (keras.ops.convert_to_numpy(backbone(t)) for t in (inputs, other))
    np.testing.assert_array_equal(a[real], b[real])
    # The padded run equals running the real tokens alone at their own length.
    np.testing.assert_allclose(a[2, :3], backbone({k: v[2:, :3] for k, v in inputs.items()})[0],
                               rtol=1e-5, atol=1e-5)


def test_causal_backbone_ignores_future_tokens(rng):
    backbone = small_backbone(causal=True, tiny_attention_dim=4)
    for block in backbone.blocks:
        load_block(block, ref.random_block_params(rng, D, FFN, N, 4))
    inputs = batch(rng, [N])
    changed = dict(inputs, token_ids=inputs["token_ids"].copy())
    changed["token_ids"][0, 8] = (changed["token_ids"][0, 8] % (VOCAB - 1)) + 1
    a, b = (keras.ops.convert_to_numpy(backbone(t)) for t in (inputs, changed))
    np.testing.assert_array_equal(a[:, :8], b[:, :8])
    assert not np.allclose(a[:, 8:], b[:, 8:])


def test_backbone_rejects_too_long_input(rng):
    with pytest.raises(ValueError, match=f"sequence_length={N}.*length {N + 1}"):
        small_backbone()(batch(rng, [N + 1], n=N + 1))


def test_masked_lm_logits_at_mask_positions(rng):
    mlm = GMLPMaskedLM(small_backbone())
    inputs = dict(batch(rng, [N, 6]), mask_positions=np.array([[0, 3], [1, 5]], "int32"))
    logits = mlm(inputs)
    assert logits.shape == (2, 2, VOCAB) and logits.dtype == "float32"
    # Tied weights: the head's output projection is the input embedding.
    assert mlm.mlm_head.token_embedding is mlm.backbone.token_embedding
    embedding_ids = {id(v) for v in mlm.backbone.token_embedding.weights}
    assert sum(id(v) in embedding_ids for v in mlm.weights) == 1


def test_masked_lm_padded_mask_slots_do_not_count(rng):
    mlm = GMLPMaskedLM(small_backbone())
    mlm.compile()
    x = dict(batch(rng, [N]), mask_positions=np.array([[2, 0]], "int32"))
    y = np.array([[5, 0]], "int32")
    weights = np.array([[1.0, 0.0]], "float32")
    only_real = dict(x, mask_positions=x["mask_positions"][:, :1])
    loss_padded = mlm.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
    loss_real = mlm.evaluate(only_real, y[:, :1], sample_weight=weights[:, :1], verbose=0, return_dict=True)
    np.testing.assert_allclose(loss_padded["loss"], loss_real["loss"], rtol=1e-5)
    np.testing.assert_allclose(loss_padded["accuracy"], loss_real["accuracy"])


def test_classifier_pools_only_real_tokens(rng):
    classifier = GMLPTextClassifier(small_backbone(), num_classes=3)
    inputs = batch(rng, [5, N])
    short = {k: v[:1, :5] for k, v in inputs.items()}
    np.testing.assert_allclose(classifier(inputs)[:1], classifier(short), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_classes"):
        GMLPTextClassifier(small_backbone(), num_classes=0)


def test_preset_parameter_counts_follow_the_equations():
    # Counted from the paper's block: LN(2d) + U(d*f+f) + gate LN(f) + W,b(n^2+n) + V(f/2*d+d).
    def expected(layers, d, f, n=128, vocab=30522, attn=None):
        block = 2 * d + d * f + f + f + n * n + n + (f // 2) * d + d
        if attn:
            block += d * 3 * attn + 3 * attn + attn * (f // 2) + f // 2
        return vocab * d + layers * block + 2 * d

    backbone = GMLPBackbone.from_preset("gmlp_tiny")
    assert backbone.count_params() == expected(4, 128, 512)
    amlp = GMLPBackbone.from_preset("amlp_base", num_layers=2)
    assert amlp.count_params() == expected(2, 512, 3072, attn=64)
    with pytest.raises(ValueError, match="`preset`='gmlp_huge': expected one of the named configurations"):
        GMLPBackbone.from_preset("gmlp_huge")


# The paper's Table 4/5 sizes (shared/REFERENCE.md section 1), in parameters.
PAPER_TEXT_PARAMETERS = {
    "gmlp_base": 130e6,
    "amlp_base": 109e6,
    "gmlp_large": 365e6,
    "amlp_large": 316e6,
    "gmlp_xlarge": 941e6,
}


def _preset_parameters(preset):
    """The preset backbone's exact parameter count, from real models of 1 and 2 blocks.

    Blocks of one preset are identical, so the count is affine in depth: building the
    941M-parameter gmlp_xlarge itself would only allocate 3.8 GB to say the same.
    """
    layers = TEXT_PRESETS[preset]["num_layers"]
    one, two = (GMLPBackbone.from_preset(preset, num_layers=n).count_params() for n in (1, 2))
    return one + (layers - 1) * (two - one)


@pytest.mark.parametrize("preset", sorted(PAPER_TEXT_PARAMETERS))
def test_text_presets_match_the_papers_parameter_counts(preset):
    count = _preset_parameters(preset)
    assert abs(count - PAPER_TEXT_PARAMETERS[preset]) <= 0.01 * PAPER_TEXT_PARAMETERS[preset], count


def test_depth_extrapolation_equals_a_built_model():
    # The extrapolation above against a model actually built at the full depth of a preset.
    assert _preset_parameters("gmlp_tiny") == GMLPBackbone.from_preset("gmlp_tiny").count_params()


def test_amlp_presets_have_the_counts_of_the_corrected_reference():
    # shared/REFERENCE.md section 1 (corrected 2026-12): 36 layers with d_attn 64 and 72 layers
    # with d_attn 128.
    assert _preset_parameters("amlp_base") == 108_573_952
    assert _preset_parameters("amlp_large") == 315_571_200


TEXT_KW = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=D, ffn_dim=FFN, sequence_length=N)


@pytest.mark.parametrize("name, value, expected", [
    ("num_layers", -2, "a positive int"),  # was a backbone of 0 blocks
    ("layer_norm_epsilon", -1, "a finite float > 0"),  # was NaN outputs
    ("vocabulary_size", 0, "a positive int"),
    ("sequence_length", 2.5, "a positive int"),
    ("ffn_dim", 31, "an even int >= 2"),
    ("tiny_attention_dim", 0, "a positive int"),
    ("dropout", 1.5, "a float in [0, 1)"),
    ("causal", "yes", "True or False"),
    ("dtype", "float33", "a dtype policy"),
    ("dropuot", 0.5, "no such argument of GMLPBackbone"),  # was silently ignored
])
def test_backbone_rejects_bad_arguments_before_building(name, value, expected, monkeypatch):
    from keras_gmlp.models import text_backbone

    def no_layers(*args, **kwargs):
        raise AssertionError("a layer was built before the arguments were checked")

    monkeypatch.setattr(text_backbone, "GMLPBlock", no_layers)
    kwargs = {**TEXT_KW, name: value}
    message = re.escape(f"`{name}`={value!r}: expected ") + ".*" + re.escape(expected)
    with pytest.raises(ValueError, match=message):
        GMLPBackbone.validate_arguments(**kwargs)
    with pytest.raises(ValueError, match=message):
        GMLPBackbone(**kwargs)


def test_validate_arguments_requires_the_required_arguments():
    kwargs = dict(TEXT_KW)
    del kwargs["ffn_dim"]
    with pytest.raises(ValueError, match=r"`ffn_dim`='<missing>': expected a value"):
        GMLPBackbone.validate_arguments(**kwargs)


@pytest.mark.parametrize("preset", sorted(TEXT_PRESETS))
def test_text_presets_pass_validate_arguments(preset):
    GMLPBackbone.validate_arguments(**TEXT_PRESETS[preset])


def test_from_preset_rejects_unknown_override():
    with pytest.raises(ValueError, match=r"`foo`=3: expected no such argument of GMLPBackbone"):
        GMLPBackbone.from_preset("gmlp_tiny", foo=3)


def test_keras_file_with_unknown_config_key_is_rejected(tmp_path):
    import json
    import zipfile

    path = tmp_path / "backbone.keras"
    small_backbone().save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["dropuot"] = 0.5
    files["config.json"] = json.dumps(config).encode()
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(edited, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match=r"`dropuot`=0.5: expected no such argument"):
        keras.saving.load_model(edited)


def test_text_tasks_reject_a_vision_backbone():
    from keras_gmlp.models import GMLPVisionBackbone

    vision = GMLPVisionBackbone(image_shape=(8, 8, 1), patch_size=4, num_layers=1, hidden_dim=8, ffn_dim=8)
    with pytest.raises(ValueError, match="`backbone`='<GMLPVisionBackbone>': expected a GMLPBackbone"):
        GMLPTextClassifier(vision, 2)
    with pytest.raises(ValueError, match="`backbone`='<GMLPVisionBackbone>': expected a GMLPBackbone"):
        GMLPMaskedLM(vision)
