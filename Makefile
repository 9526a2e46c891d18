# magnet-rt: `make serve` runs the daemon, `make test` runs the tests (both create .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel. On a GPU machine install your CUDA build of torch into .venv first and pass
# TORCH_SPEC= (empty) so it is kept: `make install TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0
MODEL ?= demo
# $MAGNET_RT_ENDPOINT when set: where the clients look too.
BIND ?= $(or $(MAGNET_RT_ENDPOINT),tcp://127.0.0.1:5555)
SERVE_ARGS ?=

.PHONY: install test-deps serve test test-gpu demo bench gpu-carry clean plugin

$(BIN)/magnet-rt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e '.[dev,demo,eval,cluster]'
	$(BIN)/python -m pip install -q --no-deps basic-pitch==0.4.0
	@touch $@

install: $(BIN)/magnet-rt

serve: install
	$(BIN)/magnet-rt serve --model $(MODEL) --bind '$(BIND)' $(SERVE_ARGS)

# Programs the tests drive (FluidSynth and its General MIDI soundfont for the data generator, liblo's
# oscsend/oscdump and headless Pure Data for the OSC clients, PortAudio for the README's --play), and what the
# DAW plugin (clients/plugin) builds with (JUCE 7 with its VST3 SDK, cppzmq + libzmq, msgpack-cxx, CMake,
# ccache for rebuilds): installed with apt-get when missing (sudo when not root); where that cannot be done,
# one sentence names the command.
TEST_DEBS := fluidsynth fluid-soundfont-gm liblo-tools puredata-core libportaudio2 \
	juce-modules-source juce-tools cppzmq-dev libmsgpack-cxx-dev libsoxr-dev cmake g++ pkg-config ccache

test-deps:
	@missing=$$(for p in $(TEST_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	missing=$$(echo $$missing); \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "make test: installing $$missing (apt-get)" >&2; \
	  { command -v apt-get >/dev/null && { [ -z "$$sudo" ] || command -v sudo >/dev/null; } \
	    && $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } \
	  || { echo "make test needs the Debian packages $$missing: install them with 'sudo apt-get install -y $$missing', then run make test again." >&2; exit 1; }; \
	fi

test: install test-deps
	$(BIN)/python -m pytest -q

# The DAW plugin (VST3 + standalone) into build/plugin (README, "DAW plugin").
plugin: test-deps
	cmake -S clients/plugin -B build/plugin -DCMAKE_BUILD_TYPE=Release
	cmake --build build/plugin --target MagnetRT_VST3 MagnetRT_Standalone

# The daemon on its default model (the shipped demo bundle): three takes, one inpaint, a PNG.
demo: install
	$(BIN)/python -m cli.demo --out out/demo

bench: install
	$(BIN)/python -m benchmarks.latency --shape tiny --device cpu --preset live --repeats 5
	$(BIN)/python -m benchmarks.latency --shape small --device cpu --preset live --repeats 2

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info

test-gpu: install
	$(BIN)/python -m pytest -q tests_gpu

# What benchmarks/gpu_suite.sh needs on a CUDA machine with no network and no venv (.gpu/ is git-ignored:
# the device tool carries it with `carry: [".gpu"]`): pure-Python wheels torch's image lacks, and the
# shared parity fixture that tests_gpu reads beside the repository root.
gpu-carry: install
	rm -rf .gpu && mkdir -p .gpu/wheels .gpu/shared/fixtures
	$(BIN)/python -m pip download -q --no-deps -d .gpu/wheels pyloudnorm==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("pyloudnorm"))')
	cp -r ../shared/fixtures/audiocraft-tiny .gpu/shared/fixtures/ && chmod -R u+w .gpu
