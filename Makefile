# Shortcuts for the scripts the README names (a fresh machine may not have make).
DATA ?= ../shared/data
VENV := .venv/bin

.PHONY: demo test setup default-model quality clean

demo:
	scripts/demo.sh

test:
	scripts/test.sh

setup:
	scripts/setup.sh test

# Reproduce the embedded default model: the exact commands of the README's model card
# (about 25 minutes on 2 CPU cores).
default-model:
	scripts/setup.sh
	mkdir -p build/default-model
	$(VENV)/edgellama tokenizer train $(DATA)/tinystories_train_prefix_4m_lowercase.txt --vocab-size 512 \
		-o build/default-model/tok512-lowercase.model
	$(VENV)/edgellama train --data $(DATA)/tinystories_train_prefix_4m_lowercase.txt \
		--tokenizer build/default-model/tok512-lowercase.model --preset 850k --batch-size 32 --max-iters 2000 \
		--learning-rate 2e-3 --min-lr 2e-4 --warmup-iters 100 --eval-interval 250 -o build/default-model/ckpt.pt
	$(VENV)/edgellama export build/default-model/ckpt.pt --quant f32 --name tinystories-850k \
		-o edgellama/models/tinystories-850k.gguf

# The model card's quality table: validation loss in F32, Q8_0 and Q4_0.
quality:
	scripts/setup.sh
	$(VENV)/python scripts/quality.py $(DATA)/tinystories_train_prefix_4m_lowercase.txt

clean:
	rm -rf build .venv
