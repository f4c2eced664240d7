# Every target depends on .venv, which this Makefile creates itself: a fresh clone needs
# nothing but python3 and make. CONFIG/NPROC/ARGS pass through to the entry points.
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
CONFIG   ?= configs/tiny.yaml
GEN_CONFIG ?= configs/self_instruct.yaml
NPROC    ?= 1
ARGS     ?=
CKPT     ?= runs/tiny/final

LORA_TASKS := runs/tiny_lora/tasks

.PHONY: setup train train-lora generate chat convert bench test lint data-stats clean gpu-check plan eval

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime

# The embedded tiny default: synthetic tasks, a tokenizer trained here, CPU + gloo, no download.
train: $(VENV)/.runtime
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m train --config $(CONFIG) $(ARGS)

# LoRA on the tiny model: four task families it never saw, exact match before and after, and
# after on its own ten families (configs/tiny_lora.yaml, docs/LORA.md).
train-lora: $(VENV)/.runtime runs/tiny/final/manifest.json
	$(PY) -m data.synthetic $(LORA_TASKS)
	@echo "== before: the base (runs/tiny/final) on the new families"
	$(PY) -m train.evaluate --ckpt runs/tiny/final --data $(LORA_TASKS)/heldout.json --show-misses 0
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m train --config configs/tiny_lora.yaml overwrite=true $(ARGS)
	@echo "== after: base + adapters (runs/tiny_lora/final) on the new families"
	$(PY) -m train.evaluate --ckpt runs/tiny_lora/final --data $(LORA_TASKS)/heldout.json --show-misses 0
	@echo "== after: on the base's own families"
	$(PY) -m train.evaluate --ckpt runs/tiny_lora/final --data runs/tiny/assets/heldout.json --show-misses 0

runs/tiny/final/manifest.json:
	$(MAKE) train

generate: $(VENV)/.runtime
	$(PY) -m generate --config $(GEN_CONFIG) $(ARGS)

# IFEval on CKPT's responses (and the pairwise judge with ARGS='--reference REF.json
# --judge-config configs/judge.yaml'), into CKPT's run directory under eval/; resumable.
eval: $(VENV)/.runtime
	$(PY) -m tools.eval all --ckpt $(CKPT) $(ARGS)

chat: $(VENV)/.runtime
	$(PY) -m tools.chat --ckpt $(CKPT) $(ARGS)

# make convert FMT=hf SRC=... DST=...   (FMT: meta | hf | to-hf | to-peft)
convert: $(VENV)/.runtime
	$(PY) -m tools.convert $(FMT) $(SRC) $(DST) $(ARGS)

bench: $(VENV)/.runtime
	$(PY) -m tools.bench $(ARGS)

data-stats: $(VENV)/.runtime
	$(PY) -m tools.data_stats $(ARGS)

# Memory/time plan of CONFIG before queueing it: make plan CONFIG=configs/alpaca_7b.yaml ARGS='--model llama1-7b'
plan: $(VENV)/.runtime
	$(PY) -m tools.plan --config $(CONFIG) $(ARGS)

# On a GPU machine with a preinstalled torch (no .venv, no pip, no network): training benchmarks,
# decode speed and the CUDA tests as one markdown table, row by row (also runs/gpu_check/table.md).
# ARGS=--quick runs the three most informative cases; ARGS=--cpu runs the reduced CPU mode.
gpu-check:
	$(PYTHON) -m tools.gpu_check $(ARGS)

test: $(VENV)/.dev
	$(PY) -m pytest -q $(ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
