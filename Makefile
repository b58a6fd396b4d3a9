# `make demo` and `make test` set up .venv from requirements.txt on first use (offline afterwards).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := dataset/demo

.PHONY: demo demo-pack test bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-common.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 2; }
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 8) <= v <= (3, 11) else "error: Python %d.%d is not supported: MXNet 1.9.1 needs numpy 1.23.5, which exists for Python 3.8-3.11 (3.11 recommended)" % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

# The main job: every face of a real photo (t1.jpg, shipped inside the insightface wheel) found by the
# bundled RetinaFace, aligned, and labelled by the bundled model; the annotated image goes to $(DEMO).
demo: install
	@mkdir -p $(DEMO)
	$(PY) infer.py --image "$$($(PY) -c 'from agegender.data.demo import wheel_image; print(wheel_image("t1.jpg"))')" \
	    --output $(DEMO)/t1_agegender.jpg
	@echo "annotated image: $(DEMO)/t1_agegender.jpg"

# Packing, on the miniature source layouts (real faces from the insightface wheel, bad files included),
# with RetinaFace alignment, then the histogram of what was packed.
demo-pack: install
	$(PY) -m agegender.data.demo $(DEMO)/raw
	$(PY) create_dataset.py --afad $(DEMO)/raw/afad --megaage $(DEMO)/raw/megaage --agedb $(DEMO)/raw/agedb \
	    --utkface $(DEMO)/raw/utkface --aaf $(DEMO)/raw/aaf --list $(DEMO)/raw/list/labels.csv --val-ratio 0.2 --output $(DEMO)
	$(PY) show_age_distribution.py $(DEMO)/train.rec --output $(DEMO)/age_distribution.png

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/pack.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/infer.py
	$(PY) benchmarks/video.py
	$(PY) benchmarks/serve.py

clean:
	rm -rf $(DEMO) .pytest_cache
