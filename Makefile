# VesselRecon developer entry points. `make demo` and `make test` set up .venv on first use.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo
export VTK_DEFAULT_OPENGL_WINDOW ?= vtkEGLRenderWindow

.PHONY: setup demo test clean

setup: $(STAMP)

# slicer-core 5.13.31053.0 and vtk 9.6.2 (pinned) have wheels for CPython 3.10-3.13 only.
PY_CHECK := import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 13) else \
	'$(PY) is Python %d.%d; VesselRecon needs Python 3.10 to 3.13 (the pinned slicer-core and vtk wheels). ' \
	'Install one (e.g. uv python install 3.12) and run: make PY=python3.12 $(MAKECMDGOALS)' % v)

$(STAMP): pyproject.toml
	test -x $(VPY) || { $(PY) -c "$(PY_CHECK)" && $(PY) -m venv $(VENV); }
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vesselrecon demo --out $(OUT)

test: $(STAMP)
	$(VPY) -m pytest -q Testing

clean:
	rm -rf $(VENV) out build
