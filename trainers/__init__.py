"""Training entry points for keras_gmlp: MLM pretraining, image classification, text fine-tuning."""
