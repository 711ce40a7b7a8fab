"""Llama in plain PyTorch over packed sequences, its attention backends, the Hugging Face adapter
and the DeepSpeed pipeline layer specs."""
