"""The decoder families (Llama, Qwen2, Qwen3, Mistral: architecture.py) in plain PyTorch over packed
sequences, their attention backends, the Hugging Face adapter and the DeepSpeed pipeline layer specs."""
