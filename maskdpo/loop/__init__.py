"""The data loop against OpenAI-compatible servers: sample, annotate, evaluate, prepare."""
