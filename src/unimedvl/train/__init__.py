"""Curriculum training: tokenizer, autoencoder, stage1-3 on Ray Train (see stages.run_stage)."""
