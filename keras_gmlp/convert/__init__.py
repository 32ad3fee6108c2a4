"""Converters from other gMLP implementations' checkpoints to keras_gmlp models.

timm (PyTorch) `gmlp_*16_224`:

```python
from keras_gmlp.convert import preprocess_image, timm_to_keras

model = timm_to_keras("gmlp_s16_224.safetensors")  # preset inferred from the shapes
logits = model.predict(preprocess_image("cat.jpg")[None])
```
"""

from keras_gmlp.convert.timm import ARCHITECTURE_KEYS
from keras_gmlp.convert.timm import check_timm_state_dict
from keras_gmlp.convert.timm import infer_timm_config
from keras_gmlp.convert.timm import matching_preset
from keras_gmlp.convert.timm import timm_state_dict_shapes
from keras_gmlp.convert.timm import timm_to_keras
from keras_gmlp.convert.timm_checkpoint import load_timm_state_dict
from keras_gmlp.convert.timm_preprocessing import preprocess_image

__all__ = [
    "ARCHITECTURE_KEYS",
    "check_timm_state_dict",
    "infer_timm_config",
    "load_timm_state_dict",
    "matching_preset",
    "preprocess_image",
    "timm_state_dict_shapes",
    "timm_to_keras",
]
