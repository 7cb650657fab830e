"""The unified model: ViT understanding encoder + VAE generation path + Mixture-of-Transformer-Experts
backbone, with presets, checkpoints in the released layout, and a tokenizer."""
