"""Training: supervised pre-training of the shipped models and self-supervised fine-tuning."""
