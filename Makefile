# The two commands in the README. Each sets itself up first (scripts/setup.sh).
DATA ?= ../shared/data
VENV := .venv/bin

.PHONY: demo test setup setup-test default-model quality clean

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test

# The main job on the embedded default model: inspect it, quantize it to Q8_0 for a
# microcontroller, and tell a story with it.
demo: setup
	$(VENV)/edgellama inspect | head -8
	$(VENV)/edgellama export edgellama/models/tinystories-850k.gguf --quant q8_0 -o build/demo/model-q8_0.gguf
	$(VENV)/edgellama generate "once upon a time" --model build/demo/model-q8_0.gguf --max-tokens 120 --seed 42

test: setup-test
	$(VENV)/python -m pytest -q

# Reproduce the embedded default model (about 40 minutes on 2 CPU cores).
default-model: setup
	mkdir -p build/default-model
	$(VENV)/edgellama tokenizer train $(DATA)/tinystories_train_prefix_4m_lowercase.txt --vocab-size 512 \
		-o build/default-model/tok512-lowercase.model
	$(VENV)/edgellama train --data $(DATA)/tinystories_train_prefix_4m_lowercase.txt \
		--tokenizer build/default-model/tok512-lowercase.model --preset 850k --batch-size 32 --max-iters 2000 \
		--learning-rate 2e-3 --min-lr 2e-4 --warmup-iters 100 --eval-interval 250 -o build/default-model/ckpt.pt
	$(VENV)/edgellama export build/default-model/ckpt.pt --quant f32 -o edgellama/models/tinystories-850k.gguf

# The README's quality table: validation loss of the default model in f32, Q8_0, Q4_0.
quality: setup
	$(VENV)/python scripts/quality.py $(DATA)/tinystories_train_prefix_4m_lowercase.txt

clean:
	rm -rf build .venv
