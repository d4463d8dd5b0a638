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
# (about 30 minutes on 2 CPU cores; a GPU is used when PyTorch sees one). Each step's
# output is a file target, so a second `make default-model` skips what is done, and
# training resumes from its last checkpoint (written every --eval-interval steps).
DEFAULT_MODEL_DIR := build/default-model
STORIES := $(DATA)/tinystories_train_prefix_4m_lowercase.txt

default-model: edgellama/models/tinystories-850k.gguf

$(VENV)/edgellama:
	scripts/setup.sh

$(DEFAULT_MODEL_DIR)/tok512-lowercase.model: $(STORIES) | $(VENV)/edgellama
	$(VENV)/edgellama tokenizer train $(STORIES) --vocab-size 512 -o $@

$(DEFAULT_MODEL_DIR)/chat.txt: $(STORIES) | $(VENV)/edgellama
	$(VENV)/edgellama data chat $(STORIES) --segment stories --template plain -o $@

$(DEFAULT_MODEL_DIR)/ckpt.pt: $(DEFAULT_MODEL_DIR)/tok512-lowercase.model $(DEFAULT_MODEL_DIR)/chat.txt
	$(VENV)/edgellama train --data $(DEFAULT_MODEL_DIR)/chat.txt --chat-format plain \
		--tokenizer $(DEFAULT_MODEL_DIR)/tok512-lowercase.model --preset 850k --batch-size 16 --max-iters 3600 \
		--learning-rate 2e-3 --min-lr 4e-4 --weight-decay 0.2 --warmup-iters 100 --eval-interval 300 --resume \
		-o $@.partial
	mv $@.partial $@

edgellama/models/tinystories-850k.gguf: $(DEFAULT_MODEL_DIR)/ckpt.pt
	$(VENV)/edgellama export $< --quant f32 --name tinystories-850k -o $@

# The model card's figures: validation loss in F32, Q8_0 and Q4_0, greedy stories, request following.
quality:
	scripts/setup.sh
	$(VENV)/python scripts/quality.py $(STORIES)

clean:
	rm -rf build .venv
