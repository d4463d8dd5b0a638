# Shortcuts for the scripts the README names (a fresh machine may not have make).
DATA ?= ../shared/data
VENV := .venv/bin

.PHONY: demo test setup default-model draft-pair quality clean

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

# A trained target and draft model for speculative decoding's draft-model goal (README,
# "A draft model"): the 15M shape, and a draft of width 64 (the 260K shape with 8 layers
# and an FFN of 256: its 32,000 x 64 classifier is most of its cost, so the layers are
# cheap to widen), on one 32,000-token vocabulary (trained on the stories, tiny
# Shakespeare and the original-case stories, so that it has that many pieces; both
# models learn the lowercase stories). The draft learns from the target's own greedy
# continuations of the training stories (`data distill`). About 65 minutes on 2 CPU
# cores with AMX (bfloat16 forward passes), minutes on a GPU.
DRAFT_PAIR_DIR := build/draft-pair

draft-pair: $(DRAFT_PAIR_DIR)/target-15m-q8_0.gguf $(DRAFT_PAIR_DIR)/draft-q8_0.gguf

$(DRAFT_PAIR_DIR)/tokenizer-corpus.txt: $(STORIES)
	mkdir -p $(DRAFT_PAIR_DIR)
	cat $(STORIES) $(DATA)/tinystories_train_prefix_197k.txt $(DATA)/tinyshakespeare.txt > $@

$(DRAFT_PAIR_DIR)/tok32k.model: $(DRAFT_PAIR_DIR)/tokenizer-corpus.txt | $(VENV)/edgellama
	$(VENV)/edgellama tokenizer train $< --vocab-size 32000 -o $@

$(DRAFT_PAIR_DIR)/target-15m.pt: $(DRAFT_PAIR_DIR)/tok32k.model
	$(VENV)/edgellama train --data $(STORIES) --segment stories --tokenizer $< --preset 15m --dtype bfloat16 \
		--batch-size 32 --max-iters 700 --learning-rate 1e-3 --min-lr 1e-4 --warmup-iters 50 \
		--eval-interval 100 --eval-windows 64 --resume -o $@.partial
	mv $@.partial $@

$(DRAFT_PAIR_DIR)/target-15m-q8_0.gguf: $(DRAFT_PAIR_DIR)/target-15m.pt
	$(VENV)/edgellama export $< --quant q8_0 --name stories15m-shape -o $@

$(DRAFT_PAIR_DIR)/distill.txt: $(DRAFT_PAIR_DIR)/target-15m-q8_0.gguf
	$(VENV)/edgellama data distill $< $(STORIES) --segment stories --temperature 0 -o $@

$(DRAFT_PAIR_DIR)/draft.pt: $(DRAFT_PAIR_DIR)/distill.txt $(DRAFT_PAIR_DIR)/tok32k.model
	$(VENV)/edgellama train --data $< --segment endoftext --tokenizer $(DRAFT_PAIR_DIR)/tok32k.model \
		--preset 260k --n-layers 8 --hidden-dim 256 --max-seq-len 256 --dtype bfloat16 --batch-size 32 \
		--max-iters 450 --learning-rate 2e-3 --min-lr 2e-4 --warmup-iters 50 --eval-interval 150 \
		--eval-windows 64 --resume -o $@.partial
	mv $@.partial $@

$(DRAFT_PAIR_DIR)/draft-q8_0.gguf: $(DRAFT_PAIR_DIR)/draft.pt
	$(VENV)/edgellama export $< --quant q8_0 --name stories15m-shape-draft -o $@

# The model card's figures: validation loss in F32, Q8_0 and Q4_0, greedy stories, request following.
quality:
	scripts/setup.sh
	$(VENV)/python scripts/quality.py $(STORIES)

clean:
	rm -rf build .venv
