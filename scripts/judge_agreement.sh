#!/usr/bin/env bash
# Regenerates the harm judge's agreement table in docs/evaluation.md:
# trains the judge with `seal judge train` (defaults: SmolLM2-135M-Instruct
# features; Safe-RLHF mini, XSTest v2 completions, JailbreakBench, pure_bad and
# BeaverTails unsafe from ../shared/data; fixed split by prompt) and splices its agreement.md between the markers
# <!-- judge-agreement:begin --> and <!-- judge-agreement:end -->.
#
#   scripts/judge_agreement.sh          # rewrite the table
#   scripts/judge_agreement.sh --check  # fail if the committed table differs
#   SEAL_BIN=target/debug/seal scripts/judge_agreement.sh  # use a built binary
#
# From a clean checkout this runs `cargo xtask setup` first (torch, SmolLM2),
# imports the SmolLM2 GGUF and extracts features once (about 40 min on 2 CPU cores; cached in
# target/seal-cache/judge-features, after which it takes about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
[[ "${1:-}" == "--check" ]] && check=1
model=target/seal-cache/smollm2-135m-instruct
[[ -d .venv/libtorch ]] || cargo xtask setup
out=target/judge/smollm2
seal=${SEAL_BIN:-target/release/seal}
[[ -n "${SEAL_BIN:-}" ]] || cargo build --release -p seal-cli
if [[ ! -f "$model/.seal-complete" ]]; then
    # setup installs the GGUF; the imported directory is made by the tests
    # or, here, imported once the same way (staged, marked, renamed).
    [[ ! -e "$model" ]] || { echo "$model exists without .seal-complete: move it away" >&2; exit 1; }
    # (without --gguf, seal import-gguf takes the GGUF setup installed).
    mkdir -p target/seal-cache
    staging="target/seal-cache/.smollm2-135m-instruct.script-$$"
    "$seal" import-gguf --out "$staging"
    printf 'the SmolLM2 GGUF of cargo xtask setup\nimported by scripts/judge_agreement.sh\n' > "$staging/.seal-complete"
    mv -T "$staging" "$model"
fi
"$seal" judge train --base "$model" --data ../shared/data --out "$out" --force
python3 - "$out/agreement.md" docs/evaluation.md "$check" <<'PY'
import sys
table_path, doc_path, check = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
lines = open(table_path).read().splitlines()
# The table and the line after it; the judge's fingerprint line stays in
# agreement.md (it names the base model).
body = "\n".join(l for l in lines if l.startswith("|"))
doc = open(doc_path).read()
begin, end = "<!-- judge-agreement:begin -->", "<!-- judge-agreement:end -->"
if begin not in doc or end not in doc:
    sys.exit(f"{doc_path}: markers {begin} / {end} not found")
head, rest = doc.split(begin, 1)
_, tail = rest.split(end, 1)
new = f"{head}{begin}\n{body}\n{end}{tail}"
if check:
    if new != doc:
        sys.exit("docs/evaluation.md: the committed agreement table differs from a fresh run")
    print("agreement table matches")
else:
    open(doc_path + ".tmp", "w").write(new)
    import os
    os.replace(doc_path + ".tmp", doc_path)
    print(f"{doc_path}: agreement table updated")
PY
