"""The model layer: the model as data, the PyTorch reference, the tokenizer, training,
checkpoints, quantization, GGUF, interop with llama2.c and Hugging Face, evaluation."""
