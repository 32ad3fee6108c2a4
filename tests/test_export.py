"""SavedModel exports, checked the way a model server loads them.

Every export is loaded in ONE fresh Python process that imports TensorFlow
with Keras, keras-hub and keras_gmlp blocked (so nothing can fall back on
them) and registers tensorflow-text's kernels from its op libraries, as a
model server links them, without importing the tensorflow_text package
(whose Python layer imports Keras). That process calls every signature and
hands the outputs back; they are compared here with the Keras models'
outputs on independently prepared inputs: tokenized by keras-hub's eager
Python path, images decoded here.
"""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import keras_gmlp
from keras_gmlp.data.text import clean_text
from keras_gmlp.data.text import make_tokenizer
from keras_gmlp.export import export_image_classifier
from keras_gmlp.export import export_model
from keras_gmlp.export import read_keras_metadata
from keras_gmlp.export import save_keras
from keras_gmlp.models import GMLPBackbone
from keras_gmlp.models import GMLPImageClassifier
from keras_gmlp.models import GMLPMaskedLM
from keras_gmlp.models import GMLPTextClassifier
from keras_gmlp.models import GMLPVisionBackbone

N = 8  # the text models' sequence_length
MAX_MASKS = 4
VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "on", "a", "mat",
    "ran", "to", "it", "is", "good", "bad", "not", "very", "##s", "##ed", ".", ",", "!", "?",
    "and", "of", "in", "we", "you", "he",
]
TEXT_LABELS = ["negative", "neutral", "positive"]
RGB_LABELS = ["ant", "bee", "cow", "doe"]
TOL = dict(rtol=1e-5, atol=1e-5)

MLM_TEXTS = [
    "The cat sat on the [MASK] .",
    "",
    "[MASK] dog [MASK]",
    # 11 tokens: truncated to 8, so the first [MASK] (token 7) is kept and the second dropped.
    "a dog ran to the mat and [MASK] the cats sat [MASK]",
    "the cat",
    "[MASK] " * 10,  # more masks than MAX_MASKS slots
]
CLASSIFIER_TEXTS = [
    "It is very good !",
    "",
    "the dog is not bad , the cat is not good and we ran to it",  # longer than N tokens
    "Cats",
    "you?",
]

# Runs in the fresh process. argv: plan pickle, results pickle. With Keras installed, plain
# `import tensorflow` imports Keras (TF pre-loads keras.src.optimizers) and `import tensorflow_text`
# imports tf.keras, so Keras is blocked (None in sys.modules reads as "not installed") and
# tensorflow-text's kernels are registered from its op libraries.
LOADER = r"""
import glob, importlib.util, os, pickle, sys
for name in ("keras", "keras_hub", "keras_nlp", "keras_gmlp", "tf_keras"):
    sys.modules[name] = None  # import fails as if not installed
import tensorflow as tf
ops_dir = os.path.join(importlib.util.find_spec("tensorflow_text").submodule_search_locations[0],
                       "python", "ops")
for library in sorted(glob.glob(os.path.join(ops_dir, "_*.so"))):
    tf.load_op_library(library)
plan = pickle.load(open(sys.argv[1], "rb"))
results = {"keras_modules": sorted(
    name for name, module in sys.modules.items()
    if module is not None
    and name.split(".")[0] in ("keras", "keras_hub", "keras_gmlp", "tf_keras"))}
assert not results["keras_modules"], results["keras_modules"]
loaded = {}
for name, path in plan["exports"].items():
    module = tf.saved_model.load(path)
    loaded[name] = module
    info = {"metadata": {k: v.numpy().decode() for k, v in module.get_metadata().items()},
            "signatures": {}}
    for attr in ("vocabulary_file", "labels_file", "metadata_file"):
        if hasattr(module, attr):
            info[attr] = getattr(module, attr).asset_path.numpy().decode()
    for sig_name, fn in module.signatures.items():
        info["signatures"][sig_name] = (sorted(fn.structured_input_signature[1]),
                                        sorted(fn.structured_outputs))
    results[name] = info
for call in plan["calls"]:
    fn = loaded[call["export"]].signatures[call["signature"]]
    try:
        outputs = fn(**{k: tf.constant(v) for k, v in call["inputs"].items()})
        results[call["id"]] = {k: v.numpy() for k, v in outputs.items()}
    except tf.errors.InvalidArgumentError as error:
        results[call["id"]] = {"error": error.message}
    except (TypeError, ValueError) as error:  # refused before the graph runs
        results[call["id"]] = {"error": f"{type(error).__name__}: {error}"}
pickle.dump(results, open(sys.argv[2], "wb"))
"""


def _randomize(model, seed):
    """Perturbs every weight so positions, padding and truncation visibly change the outputs."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        variable.assign(value + rng.normal(0.0, 0.3, value.shape).astype(value.dtype))
    return model


def _text_backbone(**kwargs):
    return GMLPBackbone(
        vocabulary_size=len(VOCAB), num_layers=2, hidden_dim=16, ffn_dim=32, sequence_length=N,
        **kwargs,
    )


def _tokenizer():
    return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=VOCAB, lowercase=True)


def _reference_ids(texts, special_tokens=None):
    """Token ids by keras-hub's eager (pure-Python) path, truncated to N and padded to the
    longest row (at least 1): the truth the in-graph tokenization must reproduce."""
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=VOCAB, lowercase=True, special_tokens=special_tokens,
        special_tokens_in_strings=bool(special_tokens),
    )
    rows = [list(tokenizer.tokenize(text))[:N] for text in texts]
    width = max(1, max(len(row) for row in rows))
    ids = np.zeros((len(rows), width), "int32")
    mask = np.zeros((len(rows), width), "int32")
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _random_token_batch(rng, batch, length):
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype("int32")
    ids = rng.integers(1, len(VOCAB), size=(batch, length)).astype("int32") * mask
    return ids, mask, lengths


def _png(pixels):
    return tf.io.encode_png(tf.constant(pixels, tf.uint8)).numpy()


def _jpeg(pixels):
    return tf.io.encode_jpeg(tf.constant(pixels, tf.uint8), quality=95).numpy()


def _eval_pixels(pixels, fraction):
    """keras_gmlp.data.images' evaluation preprocessing, restated: central crop of `fraction` of
    the shorter side (square models), bilinear antialiased resize to 8x8."""
    pixels = np.asarray(pixels, "float32")
    height, width = pixels.shape[:2]
    crop = max(int(round(fraction * min(height, width))), 1)
    top, left = (height - crop) // 2, (width - crop) // 2
    cropped = pixels[top : top + crop, left : left + crop]
    return tf.image.resize(cropped, (8, 8), antialias=True).numpy()


def _luma(rgb_pixels):
    return rgb_pixels.astype("float32") @ np.float32([[0.2989], [0.5870], [0.1140]])


def _decoded(encoded, channels):
    return tf.io.decode_image(encoded, channels=channels, expand_animations=False).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Exports four tiny models, computes Keras' answers, runs the TF-only loader once."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    base = tmp_path_factory.mktemp("exports")
    mlm = _randomize(GMLPMaskedLM(_text_backbone(tiny_attention_dim=8)), 1)
    classifier = _randomize(GMLPTextClassifier(_text_backbone(), num_classes=3), 2)
    gray = _randomize(GMLPImageClassifier(GMLPVisionBackbone(
        image_shape=(8, 8, 1), patch_size=2, num_layers=2, hidden_dim=16, ffn_dim=32), 3), 3)
    rgb = _randomize(GMLPImageClassifier(GMLPVisionBackbone(
        image_shape=(8, 8, 3), patch_size=4, num_layers=2, hidden_dim=16, ffn_dim=32), 4), 4)
    crop = 0.75
    exports = {
        # The data pipeline's tokenizer: reserved special tokens set, padding to N.
        "mlm": export_model(mlm, base / "mlm", tokenizer=make_tokenizer(VOCAB, sequence_length=N),
                            top_k=3, max_masks=MAX_MASKS),
        "classifier": export_model(classifier, base / "classifier", tokenizer=_tokenizer(),
                                   label_names=TEXT_LABELS),
        "gray": export_model(gray, base / "gray"),
        "rgb": export_model(rgb, base / "rgb", label_names=RGB_LABELS, top_k=2,
                            center_crop_fraction=crop),
    }
    models = {"mlm": mlm, "classifier": classifier, "gray": gray, "rgb": rgb}
    calls, expected = [], {}

    def add(call_id, export, signature, inputs, expect=None):
        calls.append(dict(id=call_id, export=export, signature=signature, inputs=inputs))
        expected[call_id] = expect

    def strings(texts):
        return np.array([t.encode() for t in texts], dtype=object)

    # Masked LM, raw text: batches of 6, 1 and 17 strings.
    for name, texts in [("6", MLM_TEXTS), ("1", MLM_TEXTS[:1]), ("17", (MLM_TEXTS * 3)[:17])]:
        ids, mask = _reference_ids(texts, special_tokens=["[MASK]"])
        positions = [np.flatnonzero((ids[i] == VOCAB.index("[MASK]")) & (mask[i] == 1))
                     for i in range(len(texts))]
        slots = np.zeros((len(texts), MAX_MASKS), "int32")
        for i, p in enumerate(positions):
            slots[i, : min(len(p), MAX_MASKS)] = p[:MAX_MASKS]
        logits = mlm.predict({"token_ids": ids, "padding_mask": mask, "mask_positions": slots},
                             verbose=0)
        add(f"mlm_text_{name}", "mlm", "predict_text", {"text": strings(texts)},
            dict(ids=ids, positions=positions, probabilities=_softmax(logits)))
    # Masked LM, token ids: batch 1 at length 3 and batch 17 at the full length N.
    for batch, length in [(1, 3), (17, N)]:
        ids, mask, lengths = _random_token_batch(rng, batch, length)
        positions = np.stack([rng.choice(int(l), 2) for l in lengths]).astype("int32")
        x = {"token_ids": ids, "padding_mask": mask, "mask_positions": positions}
        add(f"mlm_ids_{batch}", "mlm", "serving_default", x, mlm.predict(x, verbose=0))
    too_long = {"token_ids": np.ones((2, N + 1), "int32"),
                "padding_mask": np.ones((2, N + 1), "int32")}
    add("mlm_too_long", "mlm", "serving_default",
        {**too_long, "mask_positions": np.zeros((2, 1), "int32")})

    # Text classifier: raw text (5, 1 and 17 strings) and token ids (1 x 3, 17 x N).
    for name, texts in [("5", CLASSIFIER_TEXTS), ("1", CLASSIFIER_TEXTS[1:2]),
                        ("17", (CLASSIFIER_TEXTS * 4)[:17])]:
        ids, mask = _reference_ids(texts)
        logits = classifier.predict({"token_ids": ids, "padding_mask": mask}, verbose=0)
        add(f"classifier_text_{name}", "classifier", "predict_text", {"text": strings(texts)},
            dict(ids=ids, logits=logits))
    for batch, length in [(1, 3), (17, N)]:
        ids, mask, _ = _random_token_batch(rng, batch, length)
        x = {"token_ids": ids, "padding_mask": mask}
        add(f"classifier_ids_{batch}", "classifier", "serving_default", x,
            dict(logits=classifier.predict(x, verbose=0)))
    add("classifier_too_long", "classifier", "serving_default", too_long)

    # Image classifiers: float pixels (batch 1 and 17), then encoded bytes.
    for name, model in [("gray", gray), ("rgb", rgb)]:
        channels = model.backbone.image_shape[-1]
        for batch in (1, 17):
            images = rng.uniform(0, 255, size=(batch, 8, 8, channels)).astype("float32")
            add(f"{name}_images_{batch}", name, "serving_default", {"images": images},
                dict(logits=model.predict(images, verbose=0)))
    gray_pixels = rng.integers(0, 256, size=(17, 8, 8, 1), dtype=np.uint8)
    rgb_pixels = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    big_rgb = rng.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    # Lossless PNGs at the model's size, uncropped: the truth is the pixels themselves.
    add("gray_png_17", "gray", "predict_image_bytes",
        {"image_bytes": np.array([_png(p) for p in gray_pixels], dtype=object)},
        dict(logits=gray.predict(gray_pixels.astype("float32"), verbose=0)))
    # Mixed formats and sizes in one request, cropped to 75%; gray repeats into RGB.
    mixed = [_png(rgb_pixels[0]), _jpeg(rgb_pixels[1]), _png(big_rgb), _png(gray_pixels[0])]
    truth = np.stack([
        _eval_pixels(rgb_pixels[0], crop),
        _eval_pixels(_decoded(mixed[1], 3), crop),
        _eval_pixels(big_rgb, crop),
        _eval_pixels(np.repeat(gray_pixels[0], 3, axis=-1), crop),
    ])
    add("rgb_bytes_mixed", "rgb", "predict_image_bytes",
        {"image_bytes": np.array(mixed, dtype=object)},
        dict(logits=rgb.predict(truth, verbose=0)))
    # A JPEG, and RGB into the 1-channel model (ITU-R 601 luma), a 16x12 one cropped to 12x12.
    gray_inputs = [_jpeg(gray_pixels[1]), _png(rgb_pixels[2]), _png(big_rgb)]
    truth = np.stack([
        _eval_pixels(_decoded(gray_inputs[0], 1), 1.0),
        _eval_pixels(_luma(rgb_pixels[2]), 1.0),
        _eval_pixels(_luma(big_rgb), 1.0),
    ])
    add("gray_bytes_3", "gray", "predict_image_bytes",
        {"image_bytes": np.array(gray_inputs, dtype=object)},
        dict(logits=gray.predict(truth, verbose=0)))
    png = _png(gray_pixels[2])
    for name, corrupt in [("garbage", b"definitely not an image"), ("truncated", png[:40]),
                          ("empty", b"")]:
        add(f"gray_corrupt_{name}", "gray", "predict_image_bytes",
            {"image_bytes": np.array([png, corrupt], dtype=object)})
    # The same loaded model keeps serving after the failed requests.
    add("gray_after_corrupt", "gray", "predict_image_bytes",
        {"image_bytes": np.array([png], dtype=object)},
        dict(logits=gray.predict(gray_pixels[2:3].astype("float32"), verbose=0)))

    # Hostile requests (tests/test_export.py::test_hostile_*): each must fail alone with a clear
    # INVALID_ARGUMENT, and the process must go on serving the same answers.
    ids3, mask3 = np.array([[5, 6, 8]], "int32"), np.ones((1, 3), "int32")
    one_mask = np.array([[1]], "int32")
    for call_id, x in [
        ("id_minus_1", dict(token_ids=np.array([[5, -1, 8]], "int32"))),
        ("id_vocabulary_size", dict(token_ids=np.array([[5, len(VOCAB), 8]], "int32"))),
        ("padding_mask_shape", dict(padding_mask=np.ones((1, 2), "int32"))),
        ("padding_mask_values", dict(padding_mask=np.array([[1, 2, -1]], "int32"))),
        ("rank_1", dict(token_ids=ids3[0], padding_mask=mask3[0])),
        ("length_0", dict(token_ids=np.zeros((1, 0), "int32"), padding_mask=np.zeros((1, 0), "int32"))),
        ("int64_ids", dict(token_ids=ids3.astype("int64"))),
    ]:
        inputs = {"token_ids": ids3, "padding_mask": mask3, **x}
        add(f"classifier_hostile_{call_id}", "classifier", "serving_default", inputs)
        add(f"mlm_hostile_{call_id}", "mlm", "serving_default", {"mask_positions": one_mask, **inputs})
    for call_id, positions, batch in [("position_minus_1", [[-1]], 1), ("position_length", [[3]], 1),
                                      ("batch_2_positions_1", [[1]], 2)]:
        add(f"mlm_hostile_{call_id}", "mlm", "serving_default",
            {"token_ids": np.repeat(ids3, batch, 0), "padding_mask": np.repeat(mask3, batch, 0),
             "mask_positions": np.array(positions, "int32")})
    good = rng.uniform(0, 255, size=(2, 8, 8, 1)).astype("float32")
    for call_id, images in [
        ("rank_2", good[0, :, :, 0]), ("rank_3", good[0]), ("rank_5", good[None]),
        ("height_9", np.zeros((1, 9, 8, 1), "float32")), ("channels_3", np.zeros((1, 8, 8, 3), "float32")),
        ("nan", np.where(np.arange(64).reshape(1, 8, 8, 1) == 5, np.nan, good[:1]).astype("float32")),
        ("inf", np.full((1, 8, 8, 1), np.inf, "float32")), ("uint8", good.astype("uint8")),
    ]:
        add(f"gray_hostile_{call_id}", "gray", "serving_default", {"images": images})
    add("rgb_hostile_rank_3", "rgb", "serving_default", {"images": np.zeros((8, 8, 3), "float32")})
    add("gray_hostile_bytes_rank_2", "gray", "predict_image_bytes",
        {"image_bytes": np.array([[_png(gray_pixels[0])]], dtype=object)})
    add("classifier_hostile_text_rank_2", "classifier", "predict_text",
        {"text": np.array([[b"the cat"]], dtype=object)})
    # NUL bytes and invalid UTF-8 in raw text: tokenized as keras_gmlp.data's pipelines do.
    nul_texts = [b"the cat\x00sat on the mat", b"\x00", b"dog \x00\x00 ran [MASK]", b"\xff the cat"]
    add("mlm_text_nul", "mlm", "predict_text", {"text": np.array(nul_texts, dtype=object)})
    add("classifier_text_nul", "classifier", "predict_text",
        {"text": np.array(nul_texts, dtype=object)})
    # The same loaded models answer as before after all of the above.
    add("gray_after_hostile", "gray", "serving_default", {"images": good},
        dict(logits=gray.predict(good, verbose=0)))
    x = {"token_ids": ids3, "padding_mask": mask3, "mask_positions": one_mask}
    add("mlm_after_hostile", "mlm", "serving_default", x, mlm.predict(x, verbose=0))

    plan_path, results_path = base / "plan.pkl", base / "results.pkl"
    with open(plan_path, "wb") as f:
        pickle.dump({"exports": exports, "calls": calls}, f)
    cli = [
        subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--all",
             "--dir", exports[name]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in ("mlm", "gray")
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    loader = subprocess.run(
        [sys.executable, "-c", LOADER, str(plan_path), str(results_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert loader.returncode == 0, loader.stderr[-5000:]
    cli_output = {name: process.communicate(timeout=300)[0]
                  for name, process in zip(("mlm", "gray"), cli)}
    with open(results_path, "rb") as f:
        results = pickle.load(f)
    return dict(exports=exports, models=models, results=results, expected=expected,
                cli=cli_output)


def test_loader_process_had_no_keras(exported):
    assert exported["results"]["keras_modules"] == []


def test_exports_are_integer_versions_with_documented_signatures(exported):
    expected = {
        "mlm": {
            "serving_default": (
                ["mask_positions", "padding_mask", "token_ids"],
                ["logits", "top_k_ids", "top_k_scores", "top_k_tokens"],
            ),
            "predict_text": (
                ["text"],
                ["mask_positions", "mask_valid", "num_masks", "token_ids", "top_k_ids",
                 "top_k_scores", "top_k_tokens"],
            ),
        },
        "classifier": {
            "serving_default": (["padding_mask", "token_ids"], None),
            "predict_text": (["text"], None),
        },
        "gray": {
            "serving_default": (["images"], None),
            "predict_image_bytes": (["image_bytes"], None),
        },
    }
    classifier_outputs = ["logits", "predicted_id", "predicted_label", "probabilities",
                          "top_k_ids", "top_k_labels", "top_k_scores"]
    for name, signatures in expected.items():
        assert os.path.basename(exported["exports"][name]) == "1"
        found = exported["results"][name]["signatures"]
        assert set(found) == set(signatures)
        for signature, (inputs, outputs) in signatures.items():
            if outputs is None:
                text = signature == "predict_text"
                outputs = classifier_outputs + (["token_ids"] if text else [])
            assert found[signature] == (inputs, sorted(outputs)), (name, signature)


def test_saved_model_cli_lists_the_signatures(exported):
    mlm, gray = exported["cli"]["mlm"], exported["cli"]["gray"]
    for signature in ("serving_default", "predict_text"):
        assert f"signature_def['{signature}']" in mlm
    for name in ("text", "token_ids", "padding_mask", "mask_positions", "top_k_tokens",
                 "mask_valid"):
        assert f"['{name}']" in mlm
    assert "FastWordpieceTokenizeWithOffsets" in mlm  # the tokenizer runs in the graph
    for signature in ("serving_default", "predict_image_bytes"):
        assert f"signature_def['{signature}']" in gray
    # Inputs are declared by dtype only: the signatures check shapes themselves (see
    # keras_gmlp/export/common.py: TensorFlow does not enforce a declared shape).
    assert "inputs['images'] tensor_info:\n        dtype: DT_FLOAT\n        shape: unknown_rank" in gray
    assert "output_0" not in mlm + gray


def test_masked_lm_text_signature_matches_keras(exported):
    results, expected = exported["results"], exported["expected"]
    mask_id = VOCAB.index("[MASK]")
    for name in ("6", "1", "17"):
        out, truth = results[f"mlm_text_{name}"], expected[f"mlm_text_{name}"]
        np.testing.assert_array_equal(out["token_ids"], truth["ids"])
        for i, positions in enumerate(truth["positions"]):
            kept = min(len(positions), MAX_MASKS)
            assert out["num_masks"][i] == len(positions)
            np.testing.assert_array_equal(out["mask_valid"][i], np.arange(MAX_MASKS) < kept)
            np.testing.assert_array_equal(out["mask_positions"][i, :kept], positions[:kept])
            assert (out["mask_positions"][i, kept:] == -1).all()
            assert (out["top_k_ids"][i, kept:] == -1).all()
            assert (out["top_k_scores"][i, kept:] == 0).all()
            assert (out["top_k_tokens"][i, kept:] == b"").all()
            for slot in range(kept):
                probabilities = truth["probabilities"][i, slot]
                ids = out["top_k_ids"][i, slot]
                np.testing.assert_allclose(
                    out["top_k_scores"][i, slot], np.sort(probabilities)[::-1][:3], **TOL
                )
                np.testing.assert_allclose(probabilities[ids], out["top_k_scores"][i, slot], **TOL)
                assert [t.decode() for t in out["top_k_tokens"][i, slot]] == [VOCAB[j] for j in ids]
    out = results["mlm_text_6"]
    # The hand-counted cases: truncation keeps 1 of 2 masks; "" and "the cat" have none.
    np.testing.assert_array_equal(out["num_masks"], [1, 0, 2, 1, 0, N])
    assert out["token_ids"].shape == (6, N) and (out["token_ids"][1] == 0).all()
    assert out["token_ids"][5].tolist() == [mask_id] * N


def test_masked_lm_token_id_signature_matches_keras(exported):
    results, expected = exported["results"], exported["expected"]
    for batch in (1, 17):
        out, logits = results[f"mlm_ids_{batch}"], expected[f"mlm_ids_{batch}"]
        assert out["logits"].shape == (batch, 2, len(VOCAB))
        np.testing.assert_allclose(out["logits"], logits, **TOL)
        probabilities = _softmax(logits)
        np.testing.assert_allclose(out["top_k_scores"], -np.sort(-probabilities)[..., :3], **TOL)
        np.testing.assert_allclose(
            np.take_along_axis(probabilities, out["top_k_ids"], -1), out["top_k_scores"], **TOL
        )
        assert out["top_k_tokens"][0, 0, 0].decode() == VOCAB[out["top_k_ids"][0, 0, 0]]
    assert "sequence_length=8" in results["mlm_too_long"]["error"]


def _check_classifier(out, logits, labels):
    np.testing.assert_allclose(out["logits"], logits, **TOL)
    probabilities = _softmax(logits)
    np.testing.assert_allclose(out["probabilities"], probabilities, **TOL)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, **TOL)
    np.testing.assert_array_equal(out["predicted_id"], logits.argmax(-1))
    predicted = [label.decode() for label in out["predicted_label"]]
    assert predicted == [labels[i] for i in logits.argmax(-1)]
    k = out["top_k_ids"].shape[1]
    np.testing.assert_allclose(out["top_k_scores"], -np.sort(-probabilities)[:, :k], **TOL)
    np.testing.assert_allclose(np.take_along_axis(probabilities, out["top_k_ids"], -1),
                               out["top_k_scores"], **TOL)
    assert [[x.decode() for x in row] for row in out["top_k_labels"]] == [
        [labels[i] for i in row] for row in out["top_k_ids"]
    ]


def test_text_classifier_signatures_match_keras(exported):
    results, expected = exported["results"], exported["expected"]
    for name in ("5", "1", "17"):
        out, truth = results[f"classifier_text_{name}"], expected[f"classifier_text_{name}"]
        np.testing.assert_array_equal(out["token_ids"], truth["ids"])
        _check_classifier(out, truth["logits"], TEXT_LABELS)
        assert out["top_k_ids"].shape[1] == 3  # top_k=5 clipped to the 3 classes
    out = results["classifier_text_5"]
    assert out["token_ids"].shape == (5, N)  # the long string is truncated to N tokens
    assert (out["token_ids"][1] == 0).all() and np.isfinite(out["logits"][1]).all()  # "" is defined
    for batch in (1, 17):
        _check_classifier(results[f"classifier_ids_{batch}"],
                          expected[f"classifier_ids_{batch}"]["logits"], TEXT_LABELS)
    assert "sequence_length=8" in results["classifier_too_long"]["error"]


def test_image_signatures_match_keras(exported):
    results, expected = exported["results"], exported["expected"]
    for call_id in ("gray_images_1", "gray_images_17", "gray_png_17", "gray_bytes_3",
                    "gray_after_corrupt"):
        _check_classifier(results[call_id], expected[call_id]["logits"], ["0", "1", "2"])
    for call_id in ("rgb_images_1", "rgb_images_17", "rgb_bytes_mixed"):
        _check_classifier(results[call_id], expected[call_id]["logits"], RGB_LABELS)
        assert results[call_id]["top_k_ids"].shape[1] == 2


def test_corrupt_image_bytes_fail_the_request_with_a_clear_error(exported):
    results = exported["results"]
    assert "Unknown image file format" in results["gray_corrupt_garbage"]["error"]
    assert "PNG" in results["gray_corrupt_truncated"]["error"]
    assert "empty" in results["gray_corrupt_empty"]["error"].lower()


def test_assets_and_metadata_travel_inside_the_saved_model(exported):
    results, models = exported["results"], exported["models"]
    for name, labels in [("classifier", TEXT_LABELS), ("gray", ["0", "1", "2"]),
                         ("rgb", RGB_LABELS)]:
        path = results[name]["labels_file"]
        assert path.startswith(exported["exports"][name] + os.sep + "assets")
        assert open(path, encoding="utf-8").read().splitlines() == labels
    for name in ("mlm", "classifier"):
        path = results[name]["vocabulary_file"]
        assert path.startswith(exported["exports"][name])
        assert open(path, encoding="utf-8").read().splitlines() == VOCAB
    for name, model in models.items():
        metadata = results[name]["metadata"]
        assert metadata["keras_gmlp_version"] == keras_gmlp.__version__
        assert metadata["model_class"] == type(model).__name__
        config = json.loads(metadata["model_config"])
        assert config["class_name"] == type(model).__name__
        rebuilt = keras.saving.deserialize_keras_object(config)
        assert rebuilt.count_params() == model.count_params()
        with open(results[name]["metadata_file"], encoding="utf-8") as f:
            assert json.load(f) == json.loads(metadata["metadata"])


def test_versions_increment_and_never_overwrite(exported, tmp_path):
    model = exported["models"]["gray"]
    base = tmp_path / "versions"
    (base / "3").mkdir(parents=True)
    (base / "notes").mkdir()
    assert export_image_classifier(model, base) == str(base / "4")
    assert export_model(model, base, version=10) == str(base / "10")
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(model, base, version=10)
    assert sorted(os.listdir(base)) == ["10", "3", "4", "notes"]  # no scratch directories left


def test_text_export_without_tokenizer_has_token_id_signature_only(exported, tmp_path):
    path = export_model(exported["models"]["classifier"], tmp_path)
    loaded = tf.saved_model.load(path)
    assert list(loaded.signatures) == ["serving_default"]
    assert not hasattr(loaded, "vocabulary_file")
    assert sorted(os.listdir(os.path.join(path, "assets"))) == ["keras_gmlp.json", "labels.txt"]


def test_start_and_end_tokens_wrap_the_truncated_text(exported, tmp_path):
    classifier = exported["models"]["classifier"]
    path = export_model(classifier, tmp_path, tokenizer=_tokenizer(), start_token="[CLS]",
                        end_token="[SEP]")
    texts = ["the cat sat on the mat and the dog ran", ""]
    out = tf.saved_model.load(path).signatures["predict_text"](text=tf.constant(texts))
    ids, _ = _reference_ids(texts)
    cls, sep = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
    expected = np.array([[cls, *ids[0, : N - 2], sep], [cls, sep] + [0] * (N - 2)], "int32")
    np.testing.assert_array_equal(out["token_ids"].numpy(), expected)
    mask = np.array([[1] * N, [1, 1] + [0] * (N - 2)], "int32")
    logits = classifier.predict({"token_ids": expected, "padding_mask": mask}, verbose=0)
    np.testing.assert_allclose(out["logits"].numpy(), logits, **TOL)


def test_bad_arguments_are_named(exported, tmp_path):
    models = exported["models"]
    with pytest.raises(ValueError, match="label_names"):
        export_model(models["gray"], tmp_path, label_names=["a", "b"])
    with pytest.raises(ValueError, match="vocabulary_size"):
        export_model(models["mlm"], tmp_path, tokenizer=keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=VOCAB[:10]))
    with pytest.raises(TypeError, match="GMLPMaskedLM, GMLPTextClassifier or GMLPImageClassifier"):
        export_model(models["mlm"].backbone, tmp_path)
    with pytest.raises(ValueError, match="top_k"):
        export_model(models["gray"], tmp_path, top_k=0)
    with pytest.raises(ValueError, match="version"):
        export_model(models["gray"], tmp_path, version="v1")
    assert os.listdir(tmp_path) == []


def test_keras_file_records_version_and_config(exported, tmp_path, rng):
    model = exported["models"]["rgb"]
    path = save_keras(model, tmp_path / "model.keras")
    metadata = read_keras_metadata(path)
    assert metadata["keras_gmlp_version"] == keras_gmlp.__version__
    assert metadata["model"]["config"] == json.loads(json.dumps(model.get_config(), default=str))
    restored = keras.saving.load_model(path)
    x = rng.uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    plain = tmp_path / "plain.keras"
    model.save(plain)
    assert read_keras_metadata(plain) is None
    with zipfile.ZipFile(path) as archive:
        assert {"config.json", "metadata.json", "keras_gmlp.json"} <= set(archive.namelist())


def test_saved_models_hold_no_xla_compiled_functions(exported):
    # Training fuses element-wise kernels with XLA; exports must trace the plain ops so that
    # servers without XLA on CPU (TF Serving's default) can run them.
    from tensorflow.core.protobuf import saved_model_pb2

    for name, path in exported["exports"].items():
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        library = proto.meta_graphs[0].graph_def.library
        assert len(library.function) > 0, name
        compiled = [
            function.signature.name
            for function in library.function
            if function.attr["_XlaMustCompile"].b
        ]
        assert compiled == [], (name, compiled)


def _error(results, call_id):
    assert "error" in results[call_id], f"{call_id} answered {sorted(results[call_id])}"
    return results[call_id]["error"]


def test_hostile_token_ids_fail_the_request_naming_input_value_and_expectation(exported):
    results = exported["results"]
    for model in ("mlm", "classifier"):
        def error(case):
            return _error(results, f"{model}_hostile_{case}")

        # Negative ids used to wrap around (-1 answered as id V-1), ids >= V to gather garbage.
        assert ("`token_ids` has values in [-1, 8]: expected token ids in [0, 32), the "
                "vocabulary size.") in error("id_minus_1")
        assert "`token_ids` has values in [5, 32]" in error("id_vocabulary_size")
        assert ("`padding_mask` of shape [1 2]: expected the shape of `token_ids`, [1 3]."
                in error("padding_mask_shape"))
        assert ("`padding_mask` has values in [-1, 2]: expected 0 (padding) or 1 (token)."
                in error("padding_mask_values"))
        rank_1 = error("rank_1")
        assert "` of shape [3]: expected rank 2, (batch, length) int32." in rank_1
        assert "`token_ids`" in rank_1 or "`padding_mask`" in rank_1
        assert ("`token_ids` of shape [1 0]: expected (batch, length) with 1 <= length <= "
                "sequence_length=8.") in error("length_0")
        int64 = error("int64_ids")  # TensorFlow refuses another dtype before the graph runs
        assert "int32" in int64 and "int64" in int64
    # Positions used to wrap (-1 read the last token) and a batch-1 mask_positions broadcast.
    assert ("`mask_positions` has values in [-1, -1]: expected positions in [0, length of "
            "`token_ids`).") in _error(results, "mlm_hostile_position_minus_1")
    assert "`mask_positions` has values in [3, 3]" in _error(results, "mlm_hostile_position_length")
    assert ("`mask_positions` of shape [1 1]: expected (batch, masks) with the batch of "
            "`token_ids`, [2 3].") in _error(results, "mlm_hostile_batch_2_positions_1")
    assert ("`text` of shape [1 1]: expected (batch,) strings."
            in _error(results, "classifier_hostile_text_rank_2"))


def test_hostile_images_fail_the_request_and_the_process_keeps_serving(exported):
    results, expected = exported["results"], exported["expected"]
    # Ranks 2 and 3 used to abort the whole process (a oneDNN check); the others answered.
    for case, shape in [("rank_2", "[8 8]"), ("rank_3", "[8 8 1]"), ("rank_5", "[1 2 8 8 1]"),
                        ("height_9", "[1 9 8 1]"), ("channels_3", "[1 8 8 3]")]:
        assert (f"`images` of shape {shape}: expected (batch, 8, 8, 1) float32 pixels."
                in _error(results, f"gray_hostile_{case}")), case
    assert ("`images` of shape [8 8 3]: expected (batch, 8, 8, 3) float32 pixels."
            in _error(results, "rgb_hostile_rank_3"))
    # NaN and Inf used to answer NaN probabilities with label "0".
    assert ("`images` has 1 NaN or infinite values: expected finite pixels in [0, 255]."
            in _error(results, "gray_hostile_nan"))
    assert "`images` has 64 NaN or infinite values" in _error(results, "gray_hostile_inf")
    uint8 = _error(results, "gray_hostile_uint8")
    assert "float" in uint8 and "uint8" in uint8
    assert ("`image_bytes` of shape [1 1]: expected (batch,) encoded images."
            in _error(results, "gray_hostile_bytes_rank_2"))
    _check_classifier(results["gray_after_hostile"], expected["gray_after_hostile"]["logits"],
                      ["0", "1", "2"])
    np.testing.assert_allclose(results["mlm_after_hostile"]["logits"],
                               expected["mlm_after_hostile"], **TOL)


def test_raw_text_is_tokenized_as_the_data_pipelines_do_nul_bytes_included(exported):
    results = exported["results"]
    texts = [b"the cat\x00sat on the mat", b"\x00", b"dog \x00\x00 ran [MASK]", b"\xff the cat"]
    decoded = [t.decode("utf-8", errors="replace") for t in texts]
    # keras_gmlp.data's own path: clean_text, then the tokenizer inside tf.data.
    pipeline = tf.data.Dataset.from_tensor_slices(texts).map(clean_text).batch(len(texts))
    pipeline_ids = next(iter(pipeline.map(make_tokenizer(VOCAB)))).to_list()
    for name, special_tokens in [("classifier", None), ("mlm", ["[MASK]"])]:
        out = results[f"{name}_text_nul"]
        # keras-hub's eager, pure-Python path: the rest of the string after a NUL is kept.
        ids, mask = _reference_ids(decoded, special_tokens=special_tokens)
        np.testing.assert_array_equal(out["token_ids"], ids)
        assert ids[0].tolist() == [VOCAB.index(w) for w in "the cat sat on the mat".split()]
        if name == "classifier":
            for row, expected_row, row_mask in zip(out["token_ids"], pipeline_ids, mask):
                assert row[row_mask == 1].tolist() == expected_row[:N]
        else:
            np.testing.assert_array_equal(out["num_masks"], [0, 0, 1, 0])


def test_text_exports_take_the_tokenizer_of_the_models_preprocessor(tmp_path):
    """A model built with (or loaded with) its preprocessor exports `predict_text` without a
    `tokenizer` argument, and serves raw strings as `model.predict` does."""
    from keras_gmlp.models import GMLPTextClassifierPreprocessor
    from keras_gmlp.models import GMLPTokenizer

    texts = ["a fine film", "dull and long", "the cat sat on the mat"] * 3
    tokenizer = GMLPTokenizer.from_corpus(texts, 40)
    backbone = GMLPBackbone(vocabulary_size=tokenizer.vocabulary_size(), sequence_length=8,
                            num_layers=1, hidden_dim=16, ffn_dim=32)
    preprocessor = GMLPTextClassifierPreprocessor(tokenizer, sequence_length=8)
    model = GMLPTextClassifier(backbone, 3, preprocessor=preprocessor)
    path = keras_gmlp.export.export_text_classifier(model, str(tmp_path / "base"))
    served = tf.saved_model.load(path).signatures["predict_text"](
        text=tf.constant(texts[:3] + ["a film never seen \x00 before and much longer than eight"]))
    expected = model.predict(texts[:3] + ["a film never seen \x00 before and much longer than eight"],
                             verbose=0)
    np.testing.assert_allclose(served["logits"].numpy(), expected, atol=1e-5)
    other = GMLPTokenizer.from_corpus(["completely other words here"] * 3, 20)
    with pytest.raises(ValueError, match="differs from the one of the model's preprocessor"):
        keras_gmlp.export.export_text_classifier(model, str(tmp_path / "other"), tokenizer=other)
